"""`gateway check --online` and JSON log lines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import responses
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import ROOT, TWILIO_SID

ONLINE_CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  desk: {{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zd-token}}
routes:
  - {{from: [sms-main], to: desk}}
"""
TWILIO_ACCOUNT = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}.json"
ZENDESK_ME = "https://acme.zendesk.com/api/v2/users/me"


@responses.activate
def test_online_check_reports_each_connector(write_config: Callable[..., Path]) -> None:
    path = write_config(ONLINE_CONFIG)
    responses.get(TWILIO_ACCOUNT, json={"sid": TWILIO_SID, "friendly_name": "Acme support", "status": "active"})
    responses.get(ZENDESK_ME, json={"user": {"id": 1, "name": "Agent", "role": "admin"}})
    result = CliRunner().invoke(main, ["check", "-c", str(path), "--online"])
    assert result.exit_code == 0, result.output
    assert "sms-main: ok: account Acme support reachable" in result.output
    assert "desk: ok: authenticated as Agent (admin)" in result.output


@responses.activate
def test_online_check_fails_on_refused_credentials_without_printing_them(write_config: Callable[..., Path]) -> None:
    path = write_config(ONLINE_CONFIG)
    responses.get(TWILIO_ACCOUNT, status=401, json={"code": 20003, "message": "Authenticate"})
    responses.get(ZENDESK_ME, json={"user": {"id": None, "role": "end-user"}})
    result = CliRunner().invoke(main, ["check", "-c", str(path), "--online"])
    assert result.exit_code == 1
    assert "sms-main: FAILED" in result.output and "desk: FAILED" in result.output
    assert "test-token" not in result.output and "test-zd-token" not in result.output


def test_json_logs_are_one_object_per_line(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = write_config((ROOT / "config.example.yaml").read_text().replace("format: text", "format: json"))
    proc = subprocess.run([sys.executable, "-m", "gateway", "db", "upgrade", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "gateway", "--log-format", "json", "dlq", "list", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "the migration check at start logs at INFO"
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record)
