"""No full phone number or email address in logs (at DEBUG too) or in stored failure reasons.

Each test runs a failure path whose error carries a customer's number or address (a malformed sender, a database
error with its parameters, a CRM or provider refusal that quotes them, a Slack profile) and looks at every log line
and every reason stored for it, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from sqlalchemy import select, text

from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.logs import QUIET, setup_logging
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.redact import mask_identifier, redact
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import dead_letters, inbox, outbox, sends
from gateway.web import create_app
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.fake_slack import FakeSlack
from tests.reply_flow import drain, only_conversation, post_agent_reply, reply_config, run_sends

PHONE = "+14155550100"
EMAIL = "asha.rao@example.com"
HOOK_URL = "https://crm.example.net/hook"


@pytest.fixture(params=["sqlite", "postgresql"])
def write_config(request: pytest.FixtureRequest, write_config: Callable[..., Path]) -> Callable[..., Path]:
    """Each test that stores something runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return write_config
    url = request.getfixturevalue("postgres_url")

    def write(text: str | None = None, *, storage_url: str | None = None, name: str = "config.yaml") -> Path:
        return write_config(text, storage_url=storage_url or url, name=name)

    return write


def assert_private(text: str, *values: str) -> None:
    for value in values or (PHONE, EMAIL):
        digits = value.lstrip("+")
        assert value.lower() not in text.lower() and (not digits.isdigit() or digits not in text), (
            f"{value} appears in:\n{text}")


def stored_reasons(rt: Runtime) -> str:
    with rt.engine.connect() as conn:
        reasons = list(conn.execute(select(dead_letters.c.reason)).scalars())
        for table in (inbox, outbox, sends):
            reasons += [r for r in conn.execute(select(table.c.last_error)).scalars() if r]
    return "\n".join(reasons)


def sms(sid: str, sender: str, body: str) -> InboxItem:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


@pytest.fixture
def debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def strict_runtime(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    """The base config with one attempt per row: every failure goes to the dead letters at once."""
    config = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{max_attempts: 1}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms:
  hook: {{type: webhook, url: "{HOOK_URL}", secret: "test-hook-secret"}}
routes:
  - {{from: [sms-main], to: hook}}
"""
    rt = build_runtime(load_config(write_config(config)), http=requests.Session())
    yield rt
    rt.close()


def test_a_malformed_sender_is_quarantined_without_its_number(strict_runtime: Runtime,
                                                              debug: pytest.LogCaptureFixture) -> None:
    strict_runtime.queues.store_inbox("sms-main", [sms("SM" + "1" * 32, PHONE + "99999", "hello")], {}, PUBLIC_URL)
    drain_once(PipelineWorker(strict_runtime, "test-p"))
    assert "quarantined" in debug.text
    assert_private(debug.text, PHONE)
    assert_private(stored_reasons(strict_runtime), PHONE)
    assert "+1415…" in stored_reasons(strict_runtime)  # masked, still recognisable


def test_a_database_error_does_not_carry_the_row_s_values(strict_runtime: Runtime, debug: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(conn: Any, message: Message, *args: Any, **kwargs: Any) -> Any:
        conn.execute(text("INSERT INTO no_such_table (phone, body) VALUES (:phone, :body)"),
                     {"phone": message.sender.identifiers[0].value, "body": f"mail me at {EMAIL}"})

    monkeypatch.setattr("gateway.message_store.assign_conversation", failing)
    strict_runtime.queues.store_inbox("sms-main", [sms("SM" + "2" * 32, PHONE, "hello")], {}, PUBLIC_URL)
    drain_once(PipelineWorker(strict_runtime, "test-p"))
    assert "no_such_table" in debug.text
    assert_private(debug.text)
    assert "no_such_table" in stored_reasons(strict_runtime)
    assert_private(stored_reasons(strict_runtime))


def test_a_crm_refusal_that_quotes_the_customer_is_logged_and_kept_masked(
        strict_runtime: Runtime, debug: pytest.LogCaptureFixture) -> None:
    strict_runtime.queues.store_inbox("sms-main", [sms("SM" + "3" * 32, PHONE, "hello")], {}, PUBLIC_URL)
    drain_once(PipelineWorker(strict_runtime, "test-p"))
    with responses.RequestsMock() as mock:
        mock.post(HOOK_URL, status=422, json={"error": f"contact {EMAIL} / {PHONE} already exists"})
        drain_once(DeliveryWorker(strict_runtime, "test-d"))
    assert "dead-lettered" in debug.text
    assert_private(debug.text)
    assert "a…@example.com" in stored_reasons(strict_runtime)
    assert_private(stored_reasons(strict_runtime))


def test_a_provider_refusal_that_quotes_the_number_is_logged_masked(write_config: Callable[..., Path],
                                                                    debug: pytest.LogCaptureFixture) -> None:
    settings = {"type": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}
    rt = build_runtime(load_config(write_config(reply_config("sms-main", settings))), http=requests.Session())
    try:
        client = create_app(rt).test_client()
        rt.queues.store_inbox("sms-main", [sms("SM" + "4" * 32, PHONE, "hello")], {}, PUBLIC_URL)
        drain(PipelineWorker(rt, "test-p"))
        post_agent_reply(client, only_conversation(rt), "It ships today.")
        drain(PipelineWorker(rt, "test-p"))
        api = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
        with responses.RequestsMock() as mock:
            mock.post(api, status=400, json={"code": 21211, "status": 400,
                                             "message": f"The 'To' number {PHONE} is not a valid phone number."})
            run_sends(rt)
        assert "21211" in debug.text
        assert_private(debug.text)
        assert_private(stored_reasons(rt))
    finally:
        rt.close()


@pytest.fixture
def process_logging(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., None]]:
    """``setup_logging`` as the processes call it, with caplog still listening; the root logger restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIET}

    def setup(level_name: str, fmt: str = "text") -> None:
        setup_logging(level_name, fmt)
        root.addHandler(caplog.handler)

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def test_slack_profiles_are_not_logged_at_debug(process_logging: Callable[..., None],
                                                caplog: pytest.LogCaptureFixture) -> None:
    from connectors.slack import SlackChannel
    from gateway.plugins import ConnectorContext

    fake = FakeSlack()
    try:
        fake.state.tokens["T0PRIVACY01"] = "xoxb-test-token"
        fake.state.add_user("T0PRIVACY01", "U0ASHA00001", "Asha Rao", email=EMAIL)
        config = SlackChannel.Config.model_validate({
            "type": "slack", "signing_secret": "test-signing-secret", "bot_token": "xoxb-test-token",
            "api_base_url": fake.base_url})
        slack = SlackChannel("slack", config, ConnectorContext(http=requests.Session(), public_url=PUBLIC_URL))
        process_logging("DEBUG")
        enriched = slack.enrich(_slack_message())
    finally:
        fake.close()
    assert any(i.value == EMAIL for i in enriched.sender.identifiers)  # the profile was read
    assert_private(caplog.text, EMAIL)


def _slack_message() -> Message:
    now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    return Message(channel=ChannelType.SLACK, connector="slack", connector_type="slack", provider_message_id="D1:1.1",
                   sender=Party(identifiers=(Identifier(kind=IdentifierKind.SLACK, value="T0PRIVACY01:U0ASHA00001"),)),
                   text="hi", full_text="hi", sent_at=now, received_at=now, extras={"team_id": "T0PRIVACY01"},
                   raw=RawRef(inbox_id=1, connector="slack"))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_what_the_process_writes_is_masked_tracebacks_included(process_logging: Callable[..., None], fmt: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    process_logging("DEBUG", fmt)
    try:
        raise ValueError(f"customer {PHONE} <{EMAIL}> refused")
    except ValueError:
        logging.getLogger("some.library").exception("failed for %s", EMAIL)
    written = capsys.readouterr().err
    assert "Traceback" in written
    emails, phones = re.findall(r"email#[0-9a-f]{8}", written), re.findall(r"phone#[0-9a-f]{8}", written)
    assert len(emails) == 2 and len(set(emails)) == 1 and len(phones) == 1  # stable: one address, one hash
    assert_private(written)
    if fmt == "json":
        [line] = [json.loads(x) for x in written.splitlines() if x.startswith("{")]
        assert line["level"] == "ERROR"


@pytest.mark.parametrize(("value", "masked"), [
    (PHONE, "+1415…0100"),
    ("whatsapp:+5511987654321", "whatsapp:+5511…4321"),
    (EMAIL, "a…@example.com"),
    ("U0ASHA00001", "U0AS…0001"),
    ("12345", "…"),
])
def test_mask_identifier(value: str, masked: str) -> None:
    assert mask_identifier(value) == masked


def test_redact_masks_numbers_and_addresses_in_text_and_leaves_the_rest() -> None:
    line = (f"send 12 to {PHONE} (+44 20 7946 0958) for {EMAIL} failed at 2026-12-01 09:00:05, "
            "ticket 4711, ts 1700000000.000100, SM0123456789abcdef0123456789abcdef")
    assert redact(line) == ("send 12 to +1415…0100 (+44 2…0958) for a…@example.com failed at 2026-12-01 09:00:05, "
                            "ticket 4711, ts 1700000000.000100, SM0123456789abcdef0123456789abcdef")
    assert re.search(r"\d{7}", redact("call 14155550100 now")) is None
