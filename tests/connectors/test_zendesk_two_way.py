"""Zendesk two-way, end to end through the real pipeline: an SMS becomes a ticket, an agent's public reply comes
back by the signed webhook (and by the export poll) and is queued once as an SMS to the customer.

The SMS channel under test sends through ``RecordingSms`` (the Twilio channel plus a recorded ``send``), so what the
core hands the channel can be read back.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import select

from connectors.twilio import TwilioChannel
from gateway.cli import main
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.plugins import ReplySender, SendRequest, SendResult
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.cursors import Cursors
from gateway.storage.links import DbLinkStore
from gateway.storage.tables import inbox, messages, sends
from gateway.web import create_app
from gateway.worker import InboxWriter, drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.connectors.test_zendesk import MockedZendesk, fixture
from tests.connectors.zendesk_two_way import (
    AGENT_ID,
    API,
    REQUESTER_ID,
    TICKET_ID,
    WEBHOOK_SECRET,
    comment,
    comments_page,
    hook_body,
    signed,
    user,
    users,
)
from tests.fake_zendesk import FakeZendesk
from tests.test_pipeline import sms

CUSTOMER = "+14155550100"
REPLY = "Your parcel left the depot this morning."


def config_text(crm: str) -> str:
    return f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms:
  desk: {crm}
routes:
  - {{from: [sms-main], to: desk}}
"""


class RecordingSms(TwilioChannel, ReplySender):
    """The Twilio channel, sending into a list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[SendRequest] = []

    def send(self, request: SendRequest) -> SendResult:
        self.sent.append(request)
        return SendResult(provider_message_id="SM" + f"{len(self.sent):032x}")

    def reconcile(self, request: SendRequest) -> SendResult | None:
        return None


def runtime(path: Path) -> Runtime:
    rt = build_runtime(load_config(path), http=requests.Session())
    channel = rt.channels["sms-main"]
    rt.channels["sms-main"] = RecordingSms(channel.name, channel.config, channel.context)
    return rt


def drain(rt: Runtime) -> None:
    pipeline, delivery = PipelineWorker(rt, "test-p"), DeliveryWorker(rt, "test-d")
    while drain_once(pipeline) + drain_once(delivery):
        pass


def queued_replies(rt: Runtime) -> list[tuple[str, str, str]]:
    """(channel, text, recipient) of every queued send."""
    with rt.engine.connect() as conn:
        rows = conn.execute(select(sends.c.channel, messages.c.data)
                            .join(messages, messages.c.id == sends.c.message_id).order_by(sends.c.id)).all()
    return [(row.channel, row.data["text"], row.data["recipients"][0]["identifiers"][0]["value"]) for row in rows]


@pytest.fixture
def mocked_rt(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    crm = (f'{{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zendesk-token, '
           f'webhook_secret: "{WEBHOOK_SECRET}", reply_poll_seconds: 0}}')
    rt = runtime(write_config(config_text(crm)))
    yield rt
    rt.close()


def test_agent_reply_by_webhook_is_queued_once_for_the_sms_customer(mocked_rt: Runtime) -> None:
    rt = mocked_rt
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        MockedZendesk().install(mocked)
        rt.queues.store_inbox("sms-main", [sms("SM" + "1" * 32, CUSTOMER, "Where is my parcel?")], {},
                              f"{PUBLIC_URL}/hooks/sms-main")
        drain(rt)
        assert [json.loads(c.request.body)["ticket"]["comment"]["body"] for c in mocked.calls
                if c.request.method == "POST" and c.request.url == f"{API}/tickets"] == [
            "Where is my parcel?\n\nvia SMS (sms-main)"]
        mocked.get(f"{API}/tickets/{TICKET_ID}/comments", json=comments_page([
            comment(5000, REQUESTER_ID, "Where is my parcel?", channel="api"), comment(5001, AGENT_ID, REPLY)]))
        mocked.get(f"{API}/users/me", json=fixture("users_me"))
        mocked.get(f"{API}/users/show_many", json=users(user(AGENT_ID, "agent", "Ann Agent")))
        client = create_app(rt).test_client()
        body = hook_body(5001)
        headers = signed(body)
        assert client.post("/crm-hooks/desk", data=body, headers=headers).status_code == 200
        assert client.post("/crm-hooks/desk", data=body, headers=headers).status_code == 200  # Zendesk's retry
        forged = client.post("/crm-hooks/desk", data=hook_body(5002), headers=headers)
        assert forged.status_code == 401
        drain(rt)
    assert queued_replies(rt) == [("sms-main", REPLY, CUSTOMER)]
    with rt.engine.connect() as conn:
        assert conn.execute(select(inbox.c.provider_id).where(inbox.c.connector == "crm:desk")).scalars().all() == [
            "hook:01HQ7ZK5W6R8Y3ND2C1B0A9F8E"]
    sender = SendWorker(rt, "test-s")
    while drain_once(sender):
        pass
    channel = rt.channels["sms-main"]
    assert isinstance(channel, RecordingSms)
    [request] = channel.sent
    assert request.message.text == REPLY and request.message.extras["reply_id"] == "5001"
    assert request.reply_to.text == "Where is my parcel?"


@pytest.fixture
def fake() -> Iterator[FakeZendesk]:
    with FakeZendesk(job_delay_seconds=0) as server:
        yield server


def test_setup_then_webhook_and_poll_carry_one_reply(fake: FakeZendesk, write_config: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    path = write_config(config_text(
        f"{{type: zendesk, subdomain: acme, base_url: \"{fake.url}\", email: agent@example.com, "
        "api_token: test-zendesk-token}"))
    cli = CliRunner()
    dry = cli.invoke(main, ["crm", "setup", "-c", str(path), "desk", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("would") == 4 and not fake.webhooks and not fake.triggers
    first = cli.invoke(main, ["crm", "setup", "-c", str(path), "desk"])
    second = cli.invoke(main, ["crm", "setup", "-c", str(path), "desk"])
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert first.output.count("created") == 4 and second.output.count("exists") == 4, second.output
    assert len(fake.webhooks) == 1 and len(fake.triggers) == 2  # agent replies; solved tickets (surveys)
    [hook] = fake.webhooks.values()
    assert hook["endpoint"] == f"{PUBLIC_URL}/crm-hooks/desk"
    secret_file = tmp_path / "var" / "secrets" / "desk.webhook-secret"
    assert secret_file.read_text() == fake.webhook_secrets[hook["id"]]
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert fake.webhook_secrets[hook["id"]] not in first.output + second.output

    rt = runtime(path)
    try:
        rt.queues.store_inbox("sms-main", [sms("SM" + "2" * 32, CUSTOMER, "Where is my parcel?")], {},
                              f"{PUBLIC_URL}/hooks/sms-main")
        drain(rt)
        [ticket] = fake.tickets()
        client = create_app(rt).test_client()

        def post(url: str, headers: dict[str, str], body: bytes) -> int:
            return client.post(urlsplit(url).path, data=body, headers=headers).status_code

        agent = fake.add_agent()
        _, fired = fake.agent_comment(ticket["id"], agent, REPLY, post=post)
        assert [i.status for i in fired] == [200]
        assert fake.agent_comment(ticket["id"], agent, "internal: refund approved", public=False, post=post)[1] == []
        assert fake.agent_comment(ticket["id"], ticket["requester_id"], "thanks!", via="api", post=post)[1] == []
        drain(rt)
        assert queued_replies(rt) == [("sms-main", REPLY, CUSTOMER)]

        crm = rt.crms["desk"]
        assert crm.poll_replies(InboxWriter(rt, "crm:desk"), Cursors(rt.engine)) == 1  # the same comment, polled
        drain(rt)
        assert queued_replies(rt) == [("sms-main", REPLY, CUSTOMER)], "the polled copy is not queued again"

        links = DbLinkStore(rt.engine, "desk")
        with rt.engine.connect() as conn:
            [conversation] = set(conn.execute(select(sends.c.conversation_id)).scalars())
        crm.post_note(conversation, "Not delivered: the number cannot receive SMS.", links, key="gw-note-desk-1")
        crm.post_note(conversation, "Not delivered: the number cannot receive SMS.", links, key="gw-note-desk-1")
        notes = [c for c in fake.ticket_comments(ticket["id"]) if c["body"].startswith("Not delivered")]
        assert [(n["public"], n["author_id"]) for n in notes] == [(False, 1)]
    finally:
        rt.close()
