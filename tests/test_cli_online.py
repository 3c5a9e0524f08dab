"""`gateway check --online` and JSON log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import responses
from click.testing import CliRunner

from gateway.cli import main
from gateway.logs import setup_logging
from tests.conftest import TWILIO_SID

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


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        logging.getLogger("gateway.ingress").warning("sms-main: rejected %s", "signature")
        logging.getLogger("gateway.worker").info("worker started")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("WARNING", "gateway.ingress", "sms-main: rejected signature"), ("INFO", "gateway.worker", "worker started")]
    assert all({"time", "pid"} <= set(r) for r in records)
