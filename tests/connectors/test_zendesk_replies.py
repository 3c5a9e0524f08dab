"""Zendesk agent replies: the signed webhook, set-up, which comments count as replies, the export poll, notes.

Payload shapes: ``tests.connectors.zendesk_two_way``. End-to-end runs through the pipeline: ``test_zendesk_two_way``.
"""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from connectors.zendesk import MARKER, ZendeskConfig, ZendeskCrm
from connectors.zendesk.export import FIRST_LOOKBACK_SECONDS, cursor_key, poll
from connectors.zendesk.replies import EVENT_KIND, HOOK_KIND, MAX_COMMENT_PAGES, verify
from connectors.zendesk.setup import secret_path, store_secret, trigger_payload
from gateway.errors import MalformedRequest, PermanentError, SignatureInvalid
from gateway.plugins import AgentReplies, ConnectorContext, InternalNotes, ReplyPolling, ReplySetup
from gateway.ratelimit import MemoryRateLimiter
from gateway.records import InboxItem, RawRecord
from gateway.webhooks import Headers, HookRequest
from tests.conformance.crm import CONVERSATION_ID, CUSTOMER_ID, MemoryLinkStore
from tests.connectors.test_zendesk import API_TOKEN, EMAIL, audits_with_marker, fixture
from tests.connectors.zendesk_two_way import (
    AGENT_ID,
    API,
    API_USER_ID,
    REQUESTER_ID,
    TICKET_ID,
    WEBHOOK_ID,
    WEBHOOK_SECRET,
    attachment,
    comment,
    comment_event,
    comments_page,
    events_page,
    hook_body,
    signed,
    ticket,
    ticket_event,
    user,
    users,
)

HOOK_URL = "https://gw.example.com/crm-hooks/helpdesk"
NOW = datetime(2026, 11, 29, 10, 16, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.001)  # a real sleep always takes a little time; the bucket's float maths needs it


def zendesk(tmp_path: Path, clock: FakeClock | None = None, **settings: Any) -> ZendeskCrm:
    clock = clock or FakeClock()
    config = ZendeskConfig(**{"subdomain": "acme", "email": EMAIL, "api_token": API_TOKEN, **settings})
    context = ConnectorContext(http=requests.Session(), data_dir=tmp_path / "var",
                               limiter=lambda _n, per_minute: MemoryRateLimiter(per_minute, clock.sleep, clock))
    return ZendeskCrm("helpdesk", config, context)


def hook_request(body: bytes, headers: dict[str, str]) -> HookRequest:
    return HookRequest("POST", "/crm-hooks/helpdesk", "", Headers(headers), body, HOOK_URL)


def record(item: InboxItem) -> RawRecord:
    return RawRecord(inbox_id=7, connector="crm:helpdesk", provider_id=item.provider_id, kind=item.kind,
                     body=item.body, content_type=item.content_type, headers=Headers({}), public_url=HOOK_URL,
                     received_at=NOW)


def linked() -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("conversation", CONVERSATION_ID, str(TICKET_ID), {"status": "open"})
    links.put("customer", CUSTOMER_ID, str(REQUESTER_ID))
    return links


def test_declares_the_two_way_abilities(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    assert all(isinstance(crm, ability) for ability in (AgentReplies, ReplySetup, ReplyPolling, InternalNotes))
    assert crm.reply_poll_seconds == 60
    assert zendesk(tmp_path, reply_poll_seconds=0).reply_poll_seconds == 0


# -- signature -------------------------------------------------------------------------------------------------------
def test_signed_request_passes_and_every_tampering_is_refused(tmp_path: Path) -> None:
    crm = zendesk(tmp_path, webhook_secret=WEBHOOK_SECRET)
    body = hook_body(5001)
    headers = signed(body, when=NOW)
    verify(crm, hook_request(body, headers), now=NOW.timestamp())
    refused = [
        hook_request(body.replace(b"5001", b"5002"), headers),  # body changed in transit
        hook_request(body, {**headers, "X-Zendesk-Webhook-Signature": signed(body, secret="other", when=NOW)[
            "X-Zendesk-Webhook-Signature"]}),
        hook_request(body, {k: v for k, v in headers.items() if k != "X-Zendesk-Webhook-Signature"}),
        hook_request(body, {**headers, "X-Zendesk-Webhook-Signature-Timestamp": "yesterday"}),
    ]
    for request in refused:
        with pytest.raises(SignatureInvalid) as caught:
            verify(crm, request, now=NOW.timestamp())
        assert WEBHOOK_SECRET not in str(caught.value)


def test_stale_and_future_timestamps_are_refused(tmp_path: Path) -> None:
    crm = zendesk(tmp_path, webhook_secret=WEBHOOK_SECRET)
    body = hook_body(5001)
    verify(crm, hook_request(body, signed(body, when=NOW - timedelta(seconds=299))), now=NOW.timestamp())
    for skew in (timedelta(seconds=-301), timedelta(minutes=10)):
        with pytest.raises(SignatureInvalid, match="window"):
            verify(crm, hook_request(body, signed(body, when=NOW + skew)), now=NOW.timestamp())


def test_without_a_secret_every_request_is_refused_with_the_fix(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    body = hook_body(5001)
    with pytest.raises(SignatureInvalid, match="run `gateway crm setup helpdesk`"):
        crm.verify_reply_hook(hook_request(body, signed(body)))
    with pytest.raises(SignatureInvalid):
        crm.verify_reply_hook(hook_request(body, {"Content-Type": "application/json"}))  # unsigned: never


def test_secret_stored_by_setup_is_used_and_a_configured_one_wins(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    store_secret(secret_path(crm), WEBHOOK_SECRET)
    assert secret_path(crm) == tmp_path / "var" / "secrets" / "helpdesk.webhook-secret"
    assert stat.S_IMODE(secret_path(crm).stat().st_mode) == 0o600
    body = hook_body(5001)
    crm.verify_reply_hook(hook_request(body, signed(body)))
    configured = zendesk(tmp_path, webhook_secret="another-secret")
    with pytest.raises(SignatureInvalid, match="does not match"):
        configured.verify_reply_hook(hook_request(body, signed(body)))


# -- split -----------------------------------------------------------------------------------------------------------
def test_events_are_keyed_by_invocation_id_so_retries_dedupe(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    body = hook_body(5001)
    first = crm.split_reply_hook(hook_request(body, signed(body, invocation="01HQ7ZK5W6R8Y3ND2C1B0A9F8E")))
    retry = crm.split_reply_hook(hook_request(body, signed(body, invocation="01HQ7ZK5W6R8Y3ND2C1B0A9F8E")))
    other = crm.split_reply_hook(hook_request(body, signed(body, invocation="01HQ7ZM0000000000000000000")))
    assert [i.provider_id for i in first] == [i.provider_id for i in retry] == ["hook:01HQ7ZK5W6R8Y3ND2C1B0A9F8E"]
    assert other[0].provider_id != first[0].provider_id
    assert first[0].kind == HOOK_KIND and first[0].body == body
    bare = crm.split_reply_hook(hook_request(body, signed(body, invocation=None)))
    assert bare[0].provider_id == f"hook:ticket:{TICKET_ID}:comment:5001"


@pytest.mark.parametrize("body", [b"not json", b"[1]", json.dumps({"ticket_id": "35436"}).encode(),
                                  json.dumps({"ticket_id": "35436", "comment_id": ""}).encode(),
                                  json.dumps({"ticket_id": "", "comment_id": "5001"}).encode(),
                                  json.dumps({"ticket_id": True, "comment_id": "5001"}).encode()])
def test_malformed_bodies_are_refused(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        zendesk(tmp_path).split_reply_hook(hook_request(body, signed(body)))


# -- which comments are replies --------------------------------------------------------------------------------------
def mock_people(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/users/me", json=fixture("users_me"))
    mocked.get(f"{API}/users/show_many", json=users(
        user(AGENT_ID, "agent", "Ann Agent"), user(REQUESTER_ID, "end-user", "Jo Customer"),
        user(4242, "end-user", "A stranger"), user(API_USER_ID, "admin", "Gateway API user")))


def replies_for(crm: ZendeskCrm, found: dict[str, Any], links: MemoryLinkStore | None = None) -> list[Any]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mock_people(mocked)
        mocked.get(f"{API}/tickets/{TICKET_ID}/comments", json=comments_page([comment(9, AGENT_ID, "older"), found]))
        item = crm.split_reply_hook(hook_request(hook_body(found["id"]), signed(hook_body(found["id"]))))[0]
        return crm.agent_replies(record(item), links or linked())


def test_an_agents_public_comment_is_a_reply_with_its_attachments(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    [reply] = replies_for(crm, comment(5001, AGENT_ID, "It ships today.", attachments=[attachment()]))
    assert (reply.reply_id, reply.conversation_id, reply.text) == ("5001", CONVERSATION_ID, "It ships today.")
    assert (reply.author, reply.author_id) == ("Ann Agent", str(AGENT_ID))
    assert reply.created_at == datetime(2026, 11, 29, 10, 15, 18, tzinfo=UTC)
    [file] = reply.attachments
    assert file.location == attachment()["content_url"] and file.filename == "label.pdf" and file.size == 2532


@pytest.mark.parametrize("found", [
    comment(5001, AGENT_ID, "internal note", public=False),
    comment(5001, REQUESTER_ID, "the customer's own message", channel="api"),
    comment(5001, 4242, "an end user the gateway does not know"),
    comment(5001, API_USER_ID, "a note the gateway wrote", channel="api"),
    comment(5001, AGENT_ID, "   "),
], ids=["private", "customer", "end-user", "gateway-api-user", "empty"])
def test_other_comments_are_no_reply(tmp_path: Path, found: dict[str, Any]) -> None:
    assert replies_for(zendesk(tmp_path), found) == []


@responses.activate
def test_a_ticket_no_conversation_owns_is_not_read_at_all(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    item = crm.split_reply_hook(hook_request(hook_body(5001, ticket_id=777), signed(hook_body(5001, 777))))[0]
    assert crm.agent_replies(record(item), linked()) == []
    assert len(responses.calls) == 0


@responses.activate
def test_comment_lookup_is_bounded(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    responses.get(re.compile(rf"{API}/tickets/{TICKET_ID}/comments(\.json)?(\?.*)?$"),
                  json=comments_page([comment(9, AGENT_ID, "x")], more=True))
    item = crm.split_reply_hook(hook_request(hook_body(5001), signed(hook_body(5001))))[0]
    assert crm.agent_replies(record(item), linked()) == []
    assert len(responses.calls) == MAX_COMMENT_PAGES
    first = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert first == {"page[size]": ["100"], "sort": ["-created_at"]}


def test_a_comment_found_by_webhook_and_by_poll_has_one_reply_id(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    [by_hook] = replies_for(crm, comment(5001, AGENT_ID, "It ships today."))
    clock_now = datetime(2026, 11, 29, 11, 0, tzinfo=UTC).timestamp()
    stored: list[InboxItem] = []
    with responses.RequestsMock() as mocked:  # the people are known from the webhook's reply: no more calls
        mocked.get(f"{API}/incremental/ticket_events", json=events_page(
            [ticket_event(91048994468, TICKET_ID, int(clock_now) - 600,
                          [comment_event(5001, AGENT_ID, "It ships today.")])], int(clock_now) - 600))
        mocked.get(f"{API}/tickets/show_many", json={"tickets": [ticket()]})
        poll(crm, ListSink(stored), MemoryCursors(), now=clock_now)
    [polled] = crm.agent_replies(record(stored[0]), linked())  # people are cached: no more calls
    assert stored[0].kind == EVENT_KIND and stored[0].provider_id == "poll:comment:5001"
    assert (polled.reply_id, polled.text, polled.conversation_id) == (by_hook.reply_id, by_hook.text, CONVERSATION_ID)


# -- the export poll -------------------------------------------------------------------------------------------------
class ListSink:
    def __init__(self, items: list[InboxItem]) -> None:
        self.items = items

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int:
        new = [i for i in items if i.provider_id not in {s.provider_id for s in self.items}]
        self.items.extend(new)
        return len(new)


class MemoryCursors:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self.puts: list[dict[str, Any]] = []

    def get(self, name: str) -> dict[str, Any] | None:
        return self.values.get(name)

    def put(self, name: str, value: dict[str, Any]) -> None:
        self.values[name] = value
        self.puts.append(value)


def starts(mocked: responses.RequestsMock) -> list[int]:
    return [int(parse_qs(urlsplit(c.request.url).query)["start_time"][0]) for c in mocked.calls
            if "/incremental/ticket_events" in c.request.url]


def test_poll_keeps_agent_comments_on_gateway_tickets_and_advances_the_cursor(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    now = 1_764_410_000
    cursors, stored = MemoryCursors(), []
    cursors.put(cursor_key("helpdesk"), {"start_time": now - 600})
    page = [
        ticket_event(1, TICKET_ID, now - 500, [comment_event(5001, AGENT_ID, "It ships today.")]),
        ticket_event(2, TICKET_ID, now - 490, [comment_event(5002, AGENT_ID, "note", public=False)]),
        ticket_event(3, TICKET_ID, now - 480, [comment_event(5003, REQUESTER_ID, "thanks", channel="api")],
                     channel="api"),
        ticket_event(4, 777, now - 470, [comment_event(5004, AGENT_ID, "a Zendesk-only ticket")]),
        ticket_event(5, TICKET_ID, now - 460, [comment_event(5005, API_USER_ID, "ours", channel="api")]),
        ticket_event(6, TICKET_ID, now - 450, [{"id": 77, "event_type": "Change", "field_name": "status",
                                                "value": "pending", "previous_value": "open"}]),
    ]
    with responses.RequestsMock() as mocked:
        mock_people(mocked)
        mocked.get(f"{API}/incremental/ticket_events", json=events_page(page, now - 450))
        mocked.get(f"{API}/tickets/show_many", json={"tickets": [ticket(), ticket(777, external_id=None)]})
        assert poll(crm, ListSink(stored), cursors, now=now) == 1
        assert starts(mocked) == [now - 600]
        export_call = next(c for c in mocked.calls if "/incremental/" in c.request.url)
        assert parse_qs(urlsplit(export_call.request.url).query)["include"] == ["comment_events"]
    [item] = stored
    assert item.provider_id == "poll:comment:5001"
    event = json.loads(item.body)
    assert event["ticket_id"] == TICKET_ID and [c["id"] for c in event["child_events"]] == [5001]
    assert cursors.values[cursor_key("helpdesk")] == {"start_time": now - 450}


def test_paging_is_bounded_and_paced_by_the_export_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    crm = zendesk(tmp_path, clock)
    now = 1_764_410_000
    cursors = MemoryCursors()
    cursors.put(cursor_key("helpdesk"), {"start_time": now - 6000})
    ends = iter(range(now - 5000, now, 1000))

    def page(request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps(events_page([], next(ends), end_of_stream=False))

    with responses.RequestsMock() as mocked:
        mocked.add_callback("GET", f"{API}/incremental/ticket_events", callback=page)
        poll(crm, ListSink([]), cursors, now=now, max_pages=3)
        assert starts(mocked) == [now - 6000, now - 5000, now - 4000]
    assert cursors.values[cursor_key("helpdesk")] == {"start_time": now - 3000}
    # 10 requests a minute: after the first, each page waited for its share of the export's budget
    assert sum(clock.slept) >= 2 * 60 / 10


@responses.activate
def test_first_poll_looks_back_briefly_and_never_asks_for_the_last_minute(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    now = 1_764_410_000
    cursors = MemoryCursors()
    responses.get(f"{API}/incremental/ticket_events", json=events_page([], now - FIRST_LOOKBACK_SECONDS))
    assert poll(crm, ListSink([]), cursors, now=now) == 0
    assert starts(responses.mock) == [now - FIRST_LOOKBACK_SECONDS]
    cursors.put(cursor_key("helpdesk"), {"start_time": now - 30})
    poll(crm, ListSink([]), cursors, now=now)
    assert len(responses.calls) == 1, "a start_time inside the last minute is not requested"


# -- notes -----------------------------------------------------------------------------------------------------------
def test_note_is_private_and_written_once_per_key(tmp_path: Path) -> None:
    crm = zendesk(tmp_path)
    links = linked()
    with responses.RequestsMock() as mocked:
        mocked.get(re.compile(rf"{API}/tickets/{TICKET_ID}/audits.*"), json=fixture("ticket_audits"))
        mocked.put(f"{API}/tickets/{TICKET_ID}", json=fixture("ticket_update"))
        crm.post_note(CONVERSATION_ID, "Not delivered: the customer opted out.", links, key="gw-note-helpdesk-k1")
        crm.post_note(CONVERSATION_ID, "Not delivered: the customer opted out.", links, key="gw-note-helpdesk-k1")
        [put] = [c for c in mocked.calls if c.request.method == "PUT"]
    sent = json.loads(put.request.body)["ticket"]
    assert sent["comment"] == {"body": "Not delivered: the customer opted out.", "public": False}
    assert "author_id" not in sent["comment"], "written as the API user"
    assert sent["metadata"] == {MARKER: "gw-note-helpdesk-k1"}
    assert links.get("note", "gw-note-helpdesk-k1") == (str(TICKET_ID), {})


@responses.activate
def test_note_written_before_a_crash_is_found_in_the_audits(tmp_path: Path) -> None:
    responses.get(re.compile(rf"{API}/tickets/{TICKET_ID}/audits.*"), json=audits_with_marker("gw-note-helpdesk-k2"))
    zendesk(tmp_path).post_note(CONVERSATION_ID, "text", linked(), key="gw-note-helpdesk-k2")
    assert [c.request.method for c in responses.calls] == ["GET"]


def test_note_without_a_ticket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="no Zendesk ticket yet"):
        zendesk(tmp_path).post_note(CONVERSATION_ID, "text", MemoryLinkStore(), key="k")


# -- set-up ----------------------------------------------------------------------------------------------------------
class MockedSetup:
    """Zendesk's webhooks and triggers behind ``responses``, remembering what was created."""

    def __init__(self) -> None:
        self.webhooks: list[dict[str, Any]] = []
        self.triggers: list[dict[str, Any]] = []

    def install(self, mocked: responses.RequestsMock) -> None:
        mocked.add_callback("GET", f"{API}/webhooks", callback=self.list_webhooks)
        mocked.add_callback("POST", f"{API}/webhooks", callback=self.create_webhook)
        mocked.add_callback("GET", re.compile(rf"{API}/webhooks/\w+/signing_secret"), callback=self.secret)
        mocked.add_callback("GET", f"{API}/triggers/search", callback=self.search_triggers)
        mocked.add_callback("POST", f"{API}/triggers", callback=self.create_trigger)

    def list_webhooks(self, request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps({"webhooks": self.webhooks, "meta": {"has_more": False, "after_cursor": None,
                                                                        "before_cursor": None},
                                    "links": {"next": None, "prev": None}})

    def create_webhook(self, request: Any) -> tuple[int, dict[str, str], str]:
        hook = {**json.loads(request.body)["webhook"], "id": WEBHOOK_ID, "created_at": "2026-11-29T10:00:00Z",
                "created_by": str(API_USER_ID)}
        self.webhooks.append(hook)
        return 201, {}, json.dumps({"webhook": hook})

    def secret(self, request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps({"signing_secret": {"algorithm": "SHA256", "secret": WEBHOOK_SECRET}})

    def search_triggers(self, request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps({"triggers": self.triggers, "count": len(self.triggers), "next_page": None,
                                    "previous_page": None})

    def create_trigger(self, request: Any) -> tuple[int, dict[str, str], str]:
        trigger = {**json.loads(request.body)["trigger"], "id": 25, "position": 9, "default": False}
        self.triggers.append(trigger)
        return 201, {}, json.dumps({"trigger": trigger})


def writes(mocked: responses.RequestsMock) -> list[str]:
    return [f"{c.request.method} {urlsplit(c.request.url).path}" for c in mocked.calls if c.request.method != "GET"]


def test_setup_creates_webhook_trigger_and_secret_then_nothing_more(tmp_path: Path) -> None:
    crm, state = zendesk(tmp_path), MockedSetup()
    with responses.RequestsMock() as mocked:
        state.install(mocked)
        first = crm.setup_replies(HOOK_URL, dry_run=False)
        assert writes(mocked) == ["POST /api/v2/webhooks", "POST /api/v2/triggers", "POST /api/v2/triggers"]
        listing = parse_qs(urlsplit(mocked.calls[0].request.url).query)
        assert listing["filter[name_contains]"] == ["Channel gateway: agent replies (helpdesk)"]
    hook = state.webhooks[0]
    assert {k: hook[k] for k in ("endpoint", "http_method", "request_format", "status", "subscriptions")} == {
        "endpoint": HOOK_URL, "http_method": "POST", "request_format": "json", "status": "active",
        "subscriptions": ["conditional_ticket_events"]}
    trigger = state.triggers[0]
    assert trigger["conditions"]["all"] == [
        {"field": "comment_is_public", "operator": "is", "value": "true"},
        {"field": "role", "operator": "is", "value": "agent"},
        {"field": "current_via_id", "operator": "is_not", "value": "5"}]
    [action] = trigger["actions"]
    assert action["field"] == "notification_webhook" and action["value"][0] == WEBHOOK_ID
    assert json.loads(action["value"][1]) == {"event": "agent_reply", "ticket_id": "{{ticket.id}}",
                                              "comment_id": "{{ticket.latest_comment.id}}"}
    assert secret_path(crm).read_text() == WEBHOOK_SECRET
    assert stat.S_IMODE(secret_path(crm).stat().st_mode) == 0o600
    solved = state.triggers[1]  # for satisfaction surveys (connectors.zendesk.automation)
    assert solved["conditions"]["all"] == [{"field": "status", "operator": "changed_to", "value": "solved"}]
    assert json.loads(solved["actions"][0]["value"][1]) == {"event": "ticket_solved", "ticket_id": "{{ticket.id}}"}
    assert [line.rsplit(": ", 1)[-1].split(" ")[0] for line in first] == ["created"] * 4
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        state.install(mocked)
        second = crm.setup_replies(HOOK_URL, dry_run=False)
        assert writes(mocked) == []
    assert all("exists" in line for line in second), second
    assert not any(WEBHOOK_SECRET in line for line in first + second)


def test_dry_run_creates_nothing(tmp_path: Path) -> None:
    crm, state = zendesk(tmp_path), MockedSetup()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        state.install(mocked)
        lines = crm.setup_replies(HOOK_URL, dry_run=True)
        assert writes(mocked) == []
    assert all("would" in line for line in lines), lines
    assert not secret_path(crm).exists()


def test_a_configured_secret_is_checked_not_stored_and_never_printed(tmp_path: Path) -> None:
    state = MockedSetup()
    for configured, verdict in ((WEBHOOK_SECRET, "matches"), ("a-stale-secret", "does NOT match")):
        crm = zendesk(tmp_path, webhook_secret=configured)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
            state.install(mocked)
            lines = crm.setup_replies(HOOK_URL, dry_run=False)
        assert verdict in lines[1]
        assert not any(configured in line or WEBHOOK_SECRET in line for line in lines)
        assert not secret_path(crm).exists()


def test_a_trigger_naming_another_webhook_is_pointed_at_ours(tmp_path: Path) -> None:
    crm, state = zendesk(tmp_path), MockedSetup()
    state.webhooks.append({"id": WEBHOOK_ID, "name": "Channel gateway: agent replies (helpdesk)",
                           "endpoint": HOOK_URL, "status": "active"})
    state.triggers.append({**trigger_payload(crm, "01OLDWEBHOOK0000000000000")["trigger"], "id": 25})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        state.install(mocked)
        mocked.put(f"{API}/triggers/25", json={"trigger": state.triggers[0]})
        lines = crm.setup_replies(HOOK_URL, dry_run=False)
        [put] = [c for c in mocked.calls if c.request.method == "PUT"]
    assert json.loads(put.request.body)["trigger"]["actions"][0]["value"][0] == WEBHOOK_ID
    assert "updated" in lines[2]
