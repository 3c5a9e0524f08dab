"""Escalation: no agent reply within N business minutes -> the ticket escalated and the team told, exactly once.

The clock is controlled: messages are stored with the arrival time the test gives, and the runner is asked what is
due at a given moment. Zendesk (``GET``/``PUT /api/v2/tickets/{id}``, bodies as its Tickets reference documents them)
and Slack (``chat.postMessage``, ``{"ok": true, "channel", "ts"}``) are answered by ``responses``.

Tags: Update Ticket documents only ``tags`` (the whole list, which replaces the ticket's); ``additional_tags`` is
documented for ``tickets/update_many.json?ids=`` only
(https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/).
The escalation sends the list read with its tag added, under ``safe_update`` + ``updated_stamp``
(https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#protecting-against-ticket-update-collisions).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import responses
from pydantic import SecretStr
from sqlalchemy import select

from gateway import signed_replies
from gateway.calendars import build_calendars
from gateway.config import load_config
from gateway.escalation import CHECK_SECONDS, EscalationRunner, start_clocks
from gateway.model import Identifier, IdentifierKind, Message, MessageKind, Party, RawRef
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime, build_runtime
from gateway.storage.links import DbLinkStore
from gateway.storage.tables import messages, sla_clocks
from gateway.worker import WorkerProcess
from gateway.yamlsource import ConfigError
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.helpers import message_sid, twilio_inbox_item, twilio_params
from tests.reply_flow import REPLY_SECRET, drain
from tests.smtp_server import SmtpServer

API = "https://acme.zendesk.com/api/v2"
SLACK = "https://slack.com/api/chat.postMessage"
FRIDAY_1650 = datetime(2026, 11, 27, 16, 50, tzinfo=UTC)  # Europe/London is UTC in November
MONDAY_0920 = datetime(2026, 11, 30, 9, 20, tzinfo=UTC)  # 10 open minutes on Friday + 20 on Monday

CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
  team-slack: {{type: slack, signing_secret: test-signing-secret, bot_token: xoxb-test-token}}
crms:
  desk: {{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zendesk-token,
         reply_poll_seconds: 0}}
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: "{REPLY_SECRET}"}}
routes:
  - {{from: [sms-main], to: desk}}
  - {{from: [sms-main], to: trial}}
business_hours:
  office: {{timezone: Europe/London, hours: {{mon-fri: ["09:00-17:00"]}}}}
escalations:
  - name: first-response
    channels: [sms-main]
    after_minutes: 30
    calendar: office
    priority: urgent
    tags: [sla-breached]
    notify: {{slack: {{via: team-slack, channel: C0LEADS}}}}
"""


STAMP = "2025-11-21T16:40:00Z"


def ticket(ticket_id: int, priority: str | None = "normal", tags: tuple[str, ...] = ("channel-gateway", "sms"),
           updated_at: str = STAMP) -> dict[str, object]:
    return {"ticket": {"id": ticket_id, "url": f"{API}/tickets/{ticket_id}.json", "subject": "SMS from +14155550100",
                       "status": "open", "priority": priority, "tags": list(tags),
                       "updated_at": updated_at, "group_id": None, "requester_id": 9873843, "external_id": "conv"}}


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, SLACK, json={"ok": True, "channel": "C0LEADS", "ts": "1764000000.000100"})
        yield mock


def open_runtime(path: Path) -> Runtime:
    return build_runtime(load_config(path), http=requests.Session())


def customer_writes(rt: Runtime, n: int, at: datetime, sender: str = "+14155550100") -> str:
    """A customer's SMS arriving at ``at``, through the pipeline; its conversation id."""
    params = twilio_params(message_sid(n), sender, f"Where is my order? ({n})", TWILIO_SID)
    rt.queues.store_inbox("sms-main", [twilio_inbox_item(params)], {}, f"{PUBLIC_URL}/hooks/sms-main", received_at=at)
    drain(PipelineWorker(rt, "test-pipeline"))
    with rt.engine.connect() as conn:
        return str(conn.execute(select(messages.c.conversation_id).where(
            messages.c.provider_message_id == params["MessageSid"])).scalar_one())


def agent_replies(rt: Runtime, conversation_id: str) -> None:
    """An agent's public reply, stored as the CRM's signed hook delivers it, through the pipeline."""
    request = signed_replies.sample(SecretStr(REPLY_SECRET), conversation_id=conversation_id, text="On its way.",
                                    public_url=f"{PUBLIC_URL}/crm-hooks/trial")
    items = rt.crms["trial"].split_reply_hook(request)  # type: ignore[attr-defined]
    rt.queues.store_inbox("crm:trial", items, dict(request.headers.items()), request.public_url)
    drain(PipelineWorker(rt, "test-pipeline"))


def link_ticket(rt: Runtime, conversation_id: str, ticket_id: int) -> None:
    DbLinkStore(rt.engine, "desk").put("conversation", conversation_id, str(ticket_id))


def clocks(rt: Runtime) -> list[tuple[str, str | None]]:
    with rt.engine.connect() as conn:
        return [(row.status, row.open_key) for row in conn.execute(select(sla_clocks).order_by(sla_clocks.c.id))]


def puts(mock: responses.RequestsMock) -> list[dict[str, object]]:
    return [json.loads(call.request.body)["ticket"] for call in mock.calls if call.request.method == "PUT"]


def slack_posts(mock: responses.RequestsMock) -> list[dict[str, object]]:
    return [json.loads(call.request.body) for call in mock.calls if call.request.url == SLACK]


def test_a_restart_in_the_middle_of_the_window_still_escalates_once(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    path = write_config(CONFIG)
    mocked.add(responses.GET, f"{API}/tickets/35436", json=ticket(35436))
    mocked.add(responses.PUT, f"{API}/tickets/35436", json=ticket(35436, "urgent"))
    first = open_runtime(path)
    conversation = customer_writes(first, 1, FRIDAY_1650)
    link_ticket(first, conversation, 35436)
    assert EscalationRunner(first, "worker-a").run_due(now=FRIDAY_1650 + timedelta(hours=2)) == 0  # closed at 17:00
    first.close()  # the worker stops in the middle of the window

    second = open_runtime(path)
    runner = EscalationRunner(second, "worker-b")
    assert runner.run_due(now=MONDAY_0920 - timedelta(minutes=1)) == 0
    assert runner.run_due(now=MONDAY_0920) == 1
    assert runner.run_due(now=MONDAY_0920 + timedelta(hours=1)) == 0
    second.close()
    third = open_runtime(path)
    assert EscalationRunner(third, "worker-c").run_due(now=MONDAY_0920 + timedelta(days=1)) == 0

    [update] = puts(mocked)
    assert update["priority"] == "urgent" and update["tags"] == ["channel-gateway", "sms", "sla-breached"]
    assert update["safe_update"] is True and update["updated_stamp"] == STAMP and "additional_tags" not in update
    comment = update["comment"]
    assert isinstance(comment, dict) and comment["public"] is False and "30 business minutes" in comment["body"]
    [post] = slack_posts(mocked)
    assert post["channel"] == "C0LEADS" and "first-response" in str(post["text"])
    assert "ticket 35436: priority normal -&gt; urgent" in str(post["text"])
    assert clocks(third) == [("escalated", f"first-response:{conversation}")]
    third.close()


def test_priority_only_rises(write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    rt = open_runtime(write_config(CONFIG))
    mocked.add(responses.GET, f"{API}/tickets/7", json=ticket(7, "urgent"))
    mocked.add(responses.PUT, f"{API}/tickets/7", json=ticket(7, "urgent"))
    link_ticket(rt, customer_writes(rt, 1, FRIDAY_1650), 7)
    assert EscalationRunner(rt, "w").run_due(now=MONDAY_0920) == 1
    [update] = puts(mocked)
    assert "priority" not in update and update["tags"] == ["channel-gateway", "sms", "sla-breached"]
    assert update["safe_update"] is True and update["updated_stamp"] == STAMP
    rt.close()


def test_a_ticket_tagged_meanwhile_is_read_again_and_keeps_the_agents_tag(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    rt = open_runtime(write_config(CONFIG))
    tagged = ticket(11, tags=("channel-gateway", "sms", "vip"), updated_at="2025-11-24T09:19:00Z")  # an agent's tag
    mocked.add(responses.GET, f"{API}/tickets/11", json=ticket(11))
    mocked.add(responses.PUT, f"{API}/tickets/11", status=409, json={
        "error": "UpdateConflict", "description": "Safe Update prevented the update due to outdated ticket data. "
                                                  "Please fetch the latest ticket data and try again."})
    mocked.add(responses.GET, f"{API}/tickets/11", json=tagged)
    mocked.add(responses.PUT, f"{API}/tickets/11", json=ticket(11, "urgent"))
    link_ticket(rt, customer_writes(rt, 1, FRIDAY_1650), 11)
    runner = EscalationRunner(rt, "w")
    assert runner.run_due(now=MONDAY_0920) == 0  # refused: nothing written, tried again later
    assert runner.run_due(now=MONDAY_0920 + timedelta(hours=1)) == 1
    refused, written = puts(mocked)
    assert refused["tags"] == ["channel-gateway", "sms", "sla-breached"] and refused["updated_stamp"] == STAMP
    assert written["tags"] == ["channel-gateway", "sms", "vip", "sla-breached"]
    assert written["updated_stamp"] == "2025-11-24T09:19:00Z" and written["safe_update"] is True
    rt.close()


def test_a_ticket_that_has_the_tag_already_is_sent_no_tags(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    rt = open_runtime(write_config(CONFIG))
    mocked.add(responses.GET, f"{API}/tickets/12", json=ticket(12, tags=("sla-breached", "sms")))
    mocked.add(responses.PUT, f"{API}/tickets/12", json=ticket(12, "urgent"))
    link_ticket(rt, customer_writes(rt, 1, FRIDAY_1650), 12)
    assert EscalationRunner(rt, "w").run_due(now=MONDAY_0920) == 1
    [update] = puts(mocked)
    assert update["priority"] == "urgent" and not {"tags", "safe_update", "updated_stamp"} & update.keys()
    rt.close()


def test_an_agent_reply_stops_the_clock_and_the_next_customer_message_starts_it_again(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    rt = open_runtime(write_config(CONFIG))
    now = datetime.now(UTC)
    conversation = customer_writes(rt, 1, now - timedelta(minutes=5))
    customer_writes(rt, 2, now - timedelta(minutes=4))  # still unanswered: the first message's clock runs on
    assert clocks(rt) == [("waiting", f"first-response:{conversation}")]
    agent_replies(rt, conversation)
    assert clocks(rt) == [("answered", None)]
    runner = EscalationRunner(rt, "w")
    assert runner.run_due(now=now + timedelta(days=7)) == 0
    customer_writes(rt, 3, datetime.now(UTC))
    assert clocks(rt) == [("answered", None), ("waiting", f"first-response:{conversation}")]
    assert not puts(mocked) and not slack_posts(mocked)
    rt.close()


def test_a_worker_that_dies_while_escalating_is_taken_over_after_its_lease_and_nothing_is_repeated(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    rt = open_runtime(write_config(CONFIG))
    mocked.add(responses.GET, f"{API}/tickets/8", json=ticket(8))
    mocked.add(responses.PUT, f"{API}/tickets/8", json=ticket(8, "urgent"))
    link_ticket(rt, customer_writes(rt, 1, FRIDAY_1650), 8)
    with rt.engine.connect() as conn:
        clock_id = conn.execute(select(sla_clocks.c.id)).scalar_one()
    dead = EscalationRunner(rt, "dead-worker")
    assert dead._claim(clock_id, MONDAY_0920) is not None  # then it dies, before doing anything
    other = EscalationRunner(rt, "other-worker")
    assert other.run_due(now=MONDAY_0920 + timedelta(minutes=1)) == 0  # still leased
    assert other.run_due(now=MONDAY_0920 + timedelta(minutes=6)) == 1
    assert len(puts(mocked)) == 1 and len(slack_posts(mocked)) == 1
    rt.close()


def test_two_workers_on_postgresql_escalate_each_conversation_once(
        write_config: Callable[..., Path], postgres_url: str, mocked: responses.RequestsMock) -> None:
    path = write_config(CONFIG, storage_url=postgres_url)
    first, second = open_runtime(path), open_runtime(path)
    tickets = range(101, 109)
    for n, ticket_id in enumerate(tickets):
        conversation = customer_writes(first, n, FRIDAY_1650, sender=f"+1415555{n:04d}")
        link_ticket(first, conversation, ticket_id)
        mocked.add(responses.GET, f"{API}/tickets/{ticket_id}", json=ticket(ticket_id))
        mocked.add(responses.PUT, f"{API}/tickets/{ticket_id}", json=ticket(ticket_id, "urgent"))
    start = threading.Barrier(2)
    done: list[int] = []

    def work(rt: Runtime, owner: str) -> None:
        runner = EscalationRunner(rt, owner)
        start.wait(timeout=30)
        done.append(runner.run_due(now=MONDAY_0920))

    threads = [threading.Thread(target=work, args=(rt, name)) for rt, name in ((first, "a"), (second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(done) == len(tickets)
    put_urls = sorted(call.request.url for call in mocked.calls if call.request.method == "PUT")
    assert put_urls == sorted(f"{API}/tickets/{ticket_id}" for ticket_id in tickets)
    assert len(slack_posts(mocked)) == len(tickets)
    assert {status for status, _ in clocks(first)} == {"escalated"}
    first.close()
    second.close()


def test_config_names_what_an_escalation_refers_to(write_config: Callable[..., Path]) -> None:
    broken = (CONFIG.replace("channels: [sms-main]\n", "channels: [sms-ghost]\n")
              .replace("calendar: office", "calendar: night").replace("via: team-slack", "via: sms-main"))
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(broken))
    text = str(caught.value)
    assert "escalations[0].channels[0]: no channel named 'sms-ghost'" in text
    assert "escalations[0].calendar: no business_hours calendar 'night'" in text
    assert "escalations[0].notify.slack.via: must be a slack channel" in text


def test_the_team_can_be_told_by_email_and_a_ticket_missing_in_the_crm_does_not_stop_the_notice(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    server = SmtpServer.start()
    try:
        smtp = json.dumps(server.settings(from_address="alerts@example.com"))
        config = CONFIG.replace(
            "  team-slack:", f"  support-mail: {{type: sendgrid, url_token: test-url-token-123456, smtp: {smtp}}}\n"
                             "  team-slack:").replace(
            "    calendar: office\n", "").replace(
            "notify: {slack: {via: team-slack, channel: C0LEADS}}",
            "notify: {email: {via: support-mail, to: [leads@example.com]}}")
        rt = open_runtime(write_config(config))
        received = datetime.now(UTC) - timedelta(minutes=40)
        customer_writes(rt, 1, received)  # its ticket is not in Zendesk yet: the CRM step fails for good
        assert EscalationRunner(rt, "w").run_due(now=received + timedelta(minutes=30)) == 1
        [mail] = [item.mail for item in server.received]
        assert mail["To"] == "leads@example.com" and mail["Subject"] == "Escalation: first-response"
        assert mail["Auto-Submitted"] == "auto-generated"
        assert "waited over 30 minutes for an agent reply" in mail.get_content()
        with rt.engine.connect() as conn:
            [clock] = conn.execute(select(sla_clocks)).all()
        assert clock.status == "escalated" and "no Zendesk ticket" in clock.last_error
        rt.close()
    finally:
        server.stop()


def test_reactions_and_auto_replies_start_no_clock(write_config: Callable[..., Path]) -> None:
    rt = open_runtime(write_config(CONFIG))
    settings = rt.config.settings
    sender = Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value="+14155550100"),))
    base = {"channel": "sms", "connector": "sms-main", "connector_type": "twilio", "provider_message_id": "SMx",
            "sender": sender, "text": "ok", "sent_at": FRIDAY_1650, "received_at": FRIDAY_1650,
            "raw": RawRef(inbox_id=1, connector="sms-main")}
    with rt.engine.begin() as conn:
        for message in (Message(**base, kind=MessageKind.REACTION, target_provider_message_id="SMy"),
                        Message(**base, extras={"auto_reply": "auto_submitted:auto-replied"})):
            assert start_clocks(conn, settings.escalations, build_calendars(settings.business_hours), message,
                                "c" * 32) == 0
        assert start_clocks(conn, settings.escalations, build_calendars(settings.business_hours),
                            Message(**base), "c" * 32) == 1
    rt.close()


def test_every_worker_process_schedules_the_check_when_escalations_are_configured(
        write_config: Callable[..., Path], mocked: responses.RequestsMock) -> None:
    rt = open_runtime(write_config(CONFIG))
    mocked.add(responses.GET, f"{API}/tickets/9", json=ticket(9))
    mocked.add(responses.PUT, f"{API}/tickets/9", json=ticket(9, "urgent"))
    link_ticket(rt, customer_writes(rt, 1, datetime.now(UTC) - timedelta(days=8)), 9)  # a week of open hours ago
    [(job, seconds)] = [(job, seconds) for job, seconds in WorkerProcess(rt).jobs if job.__qualname__.startswith(
        "automation_job")]
    assert seconds == CHECK_SECONDS
    job()
    assert clocks(rt)[0][0] == "escalated" and len(puts(mocked)) == 1
    rt.close()
