"""Mappings reload when their file changes and on SIGHUP; a bad one is refused; a replay uses the current one."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import load_config
from gateway.mapping_store import MappingStore
from gateway.reload import Watch, reload_runtime
from gateway.runtime import build_runtime
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.helpers import GatewayProcess, wait_for
from tests.test_pipeline import drain, sms, store

CONTEXT = {"message": {"text": "hello", "channel": "sms"}, "customer": {}, "conversation": {}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, mtime: int) -> None:
    """Write a mapping and give it a modification time of its own (a file system may count whole seconds)."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


def label(value: str) -> str:
    return f"crm: jsonl\nfields:\n  label: '{value}'\n  text: '{{{{ message.text }}}}'\n"


def test_a_changed_file_is_loaded_at_the_next_look_and_a_bad_one_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "m.yaml", Clock()
    write(path, label("one"), 1_000_000)
    store = MappingStore({"trial": (path, None)}, check_seconds=2.0, clock=clock)
    write(path, label("two"), 1_000_100)
    assert store["trial"].apply(CONTEXT)["label"] == "one", "no look at the file before check_seconds"
    clock.now += 2.0
    assert store["trial"].apply(CONTEXT)["label"] == "two"
    write(path, "crm: jsonl\nfields:\n  label: '{{ message.body }}'\n", 1_000_200)
    clock.now += 2.0
    with caplog.at_level(logging.ERROR, logger="gateway.mapping_store"):
        assert store["trial"].apply(CONTEXT)["label"] == "two", "the mapping loaded before stays"
    assert f"{path}:3 fields.label: message has no field 'body'" in caplog.text
    assert "refused, the one loaded before stays in use" in caplog.text
    caplog.clear()
    clock.now += 2.0
    assert store["trial"].apply(CONTEXT)["label"] == "two"
    assert caplog.text == "", "a refused file is reported once, not at every look"
    write(path, label("three"), 1_000_300)
    assert store.get("trial", fresh=True).apply(CONTEXT)["label"] == "three", "fresh looks at once"  # type: ignore[union-attr]
    assert store.reloads == 2


def test_reload_takes_routes_and_mapping_files_but_not_what_needs_a_restart(
        write_config: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a.yaml").write_text(label("a"))
    (tmp_path / "b.yaml").write_text(label("b"))
    text = f"""
        storage: {{url: "{{storage_url}}"}}
        server: {{public_url: "{PUBLIC_URL}"}}
        channels:
          sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
        crms:
          trial: {{type: jsonl, path: out.jsonl, mapping: MAPPING}}
        routes: ROUTES
    """
    routed = "[{from: [sms-main], to: trial}]"
    path = write_config(text.replace("MAPPING", "a.yaml").replace("ROUTES", "[]"))
    rt = build_runtime(load_config(path), http=requests.Session())
    try:
        watch = Watch(rt)
        assert watch.poll() == [], "nothing changed"
        write_config(text.replace("MAPPING", "b.yaml").replace("ROUTES", routed))
        assert watch.poll() == ["trial"], "a changed config file is read again"
        assert rt.mappings["trial"].apply(CONTEXT)["label"] == "b"
        assert [r.to for r in rt.config.routes_from("sms-main")] == ["trial"]
        changed = text.replace("MAPPING", "a.yaml").replace("ROUTES", "[]").replace("test-token", "other-token")
        write_config(changed)
        with caplog.at_level(logging.WARNING, logger="gateway.reload"):
            reload_runtime(rt)
        assert "changes to channels.sms-main take effect at the next start" in caplog.text
        assert rt.mappings["trial"].path == tmp_path / "b.yaml", "the mapping setting waits for the restart too"
        assert [r.to for r in rt.config.routes_from("sms-main")] == ["trial"]
    finally:
        rt.close()


def test_a_replay_after_fixing_the_mapping_uses_the_fixed_mapping(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    # passes the checks (sample texts are longer), fails on a five-character message
    write(mapping, "crm: jsonl\nfields:\n  title: '{{ 100 // (message.text | length - 5) }}'\n", 1_000_000)
    path = write_config(f"""
        storage: {{url: "{{storage_url}}"}}
        server: {{public_url: "{PUBLIC_URL}"}}
        channels:
          sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
        crms:
          trial: {{type: jsonl, path: out.jsonl, mapping: m.yaml}}
        routes:
          - {{from: [sms-main], to: trial}}
    """)
    worker = build_runtime(load_config(path), http=requests.Session())
    try:
        worker.mappings.check_seconds = 3600.0  # only the replay itself may make the worker look at the file
        store(worker, sms("SM" + "0" * 31 + "1", "+14155550100", "hello"))
        drain(worker)
        [letter] = worker.queues.list_dead_letters()
        assert letter.error_code == "mapping_error"
        write(mapping, "crm: jsonl\nfields:\n  title: '{{ message.text | upper }}'\n", 1_000_100)
        result = CliRunner().invoke(main, ["dlq", "replay", "-c", str(path), str(letter.id)])
        assert result.exit_code == 0, result.output
        drain(worker)
        [line] = (tmp_path / "out.jsonl").read_text().splitlines()
        assert json.loads(line)["fields"] == {"title": "HELLO"}
    finally:
        worker.close()


@pytest.mark.parametrize("command", ["work", "run"])
def test_sighup_makes_a_running_gateway_use_the_new_mapping(tmp_path: Path, command: str) -> None:
    from gateway.runtime import build_runtime as build
    from tests.helpers import free_port

    mapping = tmp_path / "m.yaml"
    write(mapping, label("one"), 1_000_000)
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(f"""
storage: {{url: "sqlite:///{tmp_path}/g.db"}}
server: {{listen: "127.0.0.1:{port}", public_url: "http://127.0.0.1:{port}", processes: 1, threads: 2}}
workers: {{idle_poll_seconds: 0.05}}
logging: {{level: INFO}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  trial: {{type: jsonl, path: out.jsonl, mapping: m.yaml}}
routes:
  - {{from: [sms-main], to: trial}}
""")
    queue = build(load_config(path))  # the test's own handle on the database, to queue messages
    out = tmp_path / "out.jsonl"

    def labels() -> list[str]:
        return [json.loads(x)["fields"]["label"] for x in out.read_text().splitlines()] if out.exists() else []

    proc = GatewayProcess([command, "-c", str(path)], tmp_path / "gateway.log")
    try:
        store(queue, sms("SM" + "0" * 31 + "1", "+14155550100", "first"))
        wait_for(lambda: labels() == ["one"], 60, "the first message under the first mapping")
        # same size, same modification time: only SIGHUP can make the worker read it again
        write(mapping, label("two"), 1_000_000)
        proc.signal(signal.SIGHUP)
        wait_for(lambda: "mapping loaded again" in proc.output(), 60, "the reload's log line")
        store(queue, sms("SM" + "0" * 31 + "2", "+14155550100", "second"))
        wait_for(lambda: labels() == ["one", "two"], 60, "the second message under the new mapping")
        assert proc.alive()
    finally:
        code = proc.stop()
        queue.close()
    assert code == 0, proc.output()[-3000:]
