"""`gateway check --online` and JSON log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import responses
from click.testing import CliRunner

from gateway.cli import main
from gateway.logs import setup_logging
from tests.conftest import TWILIO_SID
from tests.fake_slack import FakeSlack

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


def test_online_check_fails_the_same_way_for_every_connector(write_config: Callable[..., Path]) -> None:
    """A refusal from slack_sdk, an HTTP error and an unreachable host: each one secret-free line, no traceback."""
    slack_api = FakeSlack()
    try:
        path = write_config(f"""
            storage: {{url: "{{storage_url}}"}}
            channels:
              sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
              team-chat: {{type: slack, signing_secret: test-signing, bot_token: xoxb-test-bot-token,
                           api_base_url: "{slack_api.base_url}"}}
            crms:
              desk: {{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zd-token}}
            routes:
              - {{from: [sms-main, team-chat], to: desk}}
            """)
        with responses.RequestsMock() as mocked:
            mocked.get(TWILIO_ACCOUNT, status=503)
            mocked.get(ZENDESK_ME, body=requests.ConnectionError("connection refused"))
            result = CliRunner().invoke(main, ["check", "-c", str(path), "--online"])
    finally:
        slack_api.close()
    assert result.exit_code == 1
    failures = sorted(line.strip() for line in result.output.splitlines() if "FAILED" in line)
    assert failures == ["desk: FAILED: Zendesk unreachable: ConnectionError",
                        "sms-main: FAILED: api.twilio.com answered HTTP 503",
                        "team-chat: FAILED: Slack refused the bot_token: invalid_auth"]
    assert "Traceback" not in result.output
    assert not any(secret in result.output for secret in ("test-token", "xoxb-test-bot-token", "test-zd-token"))


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
