"""With ``logging.format: json`` every line the processes write is one JSON object: startup lines, gunicorn's own
messages, warnings and crashes included; and each delivered message is one INFO line of ids, never its text or the
customer's number or address.

The gateway runs as ``gateway run`` / ``gateway serve`` processes, and every line of their output is parsed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    ROOT,
    TWILIO_SID,
    TWILIO_TOKEN,
    GatewayProcess,
    free_port,
    message_sid,
    send_twilio,
    twilio_params,
    wait_for,
    wait_ready,
    write_gateway_config,
)

PHONE = "+14155550123"
EMAIL = "asha.rao@example.com"
TEXT = f"my parcel is late, write to {EMAIL}"


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of ``output`` as a JSON object; fails on the first line that is not one."""
    lines = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- whole output ---\n{output[-4000:]}")
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= record.keys(), line
        lines.append(record)
    return lines


def json_config(tmp_path: Path, port: int) -> Path:
    path = write_gateway_config(tmp_path, storage_url=f"sqlite:///{tmp_path / 'gateway.db'}", port=port,
                                crms=f'{{trial: {{type: jsonl, path: "{tmp_path / "crm.jsonl"}"}}}}',
                                routes="[{from: [sms-main], to: trial}]")
    path.write_text(path.read_text().replace("logging: {level: WARNING}", "logging: {format: json, level: INFO}"))
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_gateway_run_writes_only_json_and_one_line_per_delivered_message(tmp_path: Path) -> None:
    port = free_port()
    config = json_config(tmp_path, port)
    proc = GatewayProcess(["run", "-c", str(config)], tmp_path / "gateway.log")
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, proc)
        sid = message_sid(17)
        answer = send_twilio(base_url, base_url, "sms-main", TWILIO_TOKEN, twilio_params(sid, PHONE, TEXT, TWILIO_SID))
        assert answer.status_code == 200
        wait_for(lambda: (tmp_path / "crm.jsonl").exists() and (tmp_path / "crm.jsonl").read_text(), 30,
                 "the message in the trial CRM")
        wait_for(lambda: '"delivered"' in proc.output(), 30, "the delivery's log line")
    finally:
        assert proc.stop() == 0
    output = proc.output()
    records = json_lines(output)
    listening = [r for r in records if r["message"].startswith("gateway listening on")]
    assert len(listening) == 1 and f"127.0.0.1:{port}" in listening[0]["message"]
    [delivered] = [r for r in records if r.get("event") == "delivered"]
    assert delivered["level"] == "INFO" and delivered["logger"] == "gateway.delivery"
    assert (delivered["crm"], delivered["channel"], delivered["connector"]) == ("trial", "sms", "sms-main")
    assert delivered["provider_message_id"] == sid and delivered["operation"] == "appended"
    assert delivered["message_id"] and delivered["conversation_id"] and delivered["customer_id"]
    assert delivered["remote_id"] and delivered["message_id"] in delivered["message"]
    for secret in (TEXT, "parcel", EMAIL, PHONE, PHONE.lstrip("+")):
        assert secret not in output, f"{secret!r} is in the logs"


def test_gunicorn_s_own_errors_are_json_lines(tmp_path: Path, taken_port: int) -> None:
    """With the port taken, gunicorn's bind errors come through the gateway's JSON handler, then it exits."""
    config = json_config(tmp_path, taken_port)
    proc = GatewayProcess(["serve", "-c", str(config)], tmp_path / "serve.log")
    try:
        code = proc.wait(timeout=60)  # gunicorn tries the bind five times, a second apart
    finally:
        proc.stop()
    records = json_lines(proc.output())
    assert code != 0
    assert any("Connection in use" in r["message"] and r["logger"] == "gunicorn.error" for r in records), records


def test_warnings_and_crashes_are_json_lines_and_masked() -> None:
    script = ("import threading, warnings\n"
              "from gateway.logs import setup_logging\n"
              "setup_logging('INFO', 'json')\n"
              "warnings.warn('an old setting')\n"
              f"thread = threading.Thread(target=lambda: 1 / 0, name='poller'); thread.start(); thread.join()\n"
              f"raise RuntimeError('cannot reach {PHONE}')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    records = json_lines(result.stderr)
    assert [r["level"] for r in records] == ["WARNING", "CRITICAL", "CRITICAL"]
    assert "an old setting" in records[0]["message"]
    assert "poller" in records[1]["message"] and "ZeroDivisionError" in records[1]["exc_info"]
    assert "RuntimeError: cannot reach phone#" in records[2]["exc_info"]
    assert PHONE not in result.stderr
