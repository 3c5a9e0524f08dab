"""Salesforce as a source of agent replies: the reply poll, rows to replies, the signed reply hook, notes.

The org (``tests/fake_salesforce.py``) answers the query resource ``/services/data/v59.0/query?q=...`` with the
documented ``{totalSize, done, records: [{attributes: {type, url}, ...}], nextRecordsUrl}`` by evaluating the SOQL
the connector sends, so the cursor, the publication filter and the integration-user filter are tested on what the
query says, not on what a canned answer happens to contain. UserInfo answers ``{sub, user_id, organization_id,
...}``; a created record answers ``{id, success, errors}``; every answer carries ``Sforce-Limit-Info``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from pydantic import ValidationError
from sqlalchemy import func, select

from connectors.salesforce import SalesforceConfig, SalesforceCrm
from connectors.salesforce import replies as sf_replies
from connectors.twilio import TwilioChannel
from gateway import signed_replies
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.errors import PermanentError, SignatureInvalid
from gateway.notes import NoteWorker
from gateway.pipeline import PipelineWorker
from gateway.plugins import (
    AgentReplies,
    InternalNotes,
    Registry,
    ReplyPolling,
    ReplySender,
    SendRequest,
    SendResult,
    abilities,
)
from gateway.records import InboxItem, RawRecord
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.tables import messages, sends
from gateway.web import create_app
from gateway.webhooks import Headers, HookRequest
from gateway.worker import drain_once, reply_poll_job
from tests.conformance.crm import CONVERSATION_ID, MemoryLinkStore
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.connectors.test_salesforce import (
    ACCESS_TOKEN,
    CASE_ID,
    CONSUMER_KEY,
    DATA,
    INSTANCE,
    PRIVATE_KEY,
    SESSION_ID,
    Clock,
    salesforce,
)
from tests.fake_salesforce import AGENT_NAME, AGENT_USER, INTEGRATION_USER, ReplyOrg, sf_datetime
from tests.test_pipeline import drain, sms, store

EXT = "Gateway_Conversation_Id__c"
REPLY_SECRET = "test-reply-secret"
OTHER_CASE = "500R000000B2cDfIAF"


class Sink:
    """An InboxSink that keeps everything it is given (no dedupe, so a row read twice shows twice)."""

    def __init__(self) -> None:
        self.items: list[InboxItem] = []

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int:
        self.items.extend(items)
        return len(items)

    def ids(self) -> list[str]:
        return [item.provider_id for item in self.items]


class MemoryCursors:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.values[name])) if name in self.values else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        self.values[name] = json.loads(json.dumps(value))


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def org(mocked: responses.RequestsMock) -> ReplyOrg:
    org = ReplyOrg()
    org.install(mocked)
    org.records["Case"] = {CASE_ID: {"Id": CASE_ID, EXT: CONVERSATION_ID},
                           OTHER_CASE: {"Id": OTHER_CASE, EXT: None}}
    return org


def connector(org: ReplyOrg, **settings: Any) -> SalesforceCrm:
    """The connector, its reply clock on the org's clock."""
    crm = salesforce(**settings)
    crm.reply_clock = lambda: org.now
    return crm


def linked() -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("conversation", CONVERSATION_ID, CASE_ID)
    return links


def comment(org: ReplyOrg, text: str, *, published: bool = True, parent: str = CASE_ID, **extra: Any) -> str:
    return org.add("CaseComment", ParentId=parent, CommentBody=text, IsPublished=published, **extra)


def email(org: ReplyOrg, text: str, *, incoming: bool = False, status: str = "3", **extra: Any) -> str:
    return org.add("EmailMessage", ParentId=CASE_ID, Subject="Re: your order", TextBody=text, HtmlBody=None,
                   Incoming=incoming, Status=status, **extra)


def row(item: InboxItem, provider_id: str | None = None) -> RawRecord:
    return RawRecord(inbox_id=1, connector="crm:sf", provider_id=provider_id or item.provider_id, kind=item.kind,
                     body=item.body, content_type=item.content_type, headers=Headers({}), public_url="",
                     received_at=datetime(2026, 11, 29, 12, tzinfo=UTC))


def reply_queries(org: ReplyOrg) -> list[str]:
    return [q for q in org.queries if "SystemModstamp" in q]


# -- what a poll reads ----------------------------------------------------------------------------------------------
def test_declares_the_reply_abilities() -> None:
    assert {"agent_replies", "reply_polling", "internal_notes"} <= set(abilities(SalesforceCrm))
    assert issubclass(SalesforceCrm, AgentReplies) and issubclass(SalesforceCrm, ReplyPolling)
    assert issubclass(SalesforceCrm, InternalNotes)


def test_poll_reads_agents_public_replies_on_gateway_cases_only(org: ReplyOrg,
                                                                mocked: responses.RequestsMock) -> None:
    crm, sink, cursors = connector(org), Sink(), MemoryCursors()
    assert crm.poll_replies(sink, cursors) == 0, "the first poll starts now"
    org.now += timedelta(seconds=30)
    wanted = comment(org, "Your parcel left the depot today.")
    comment(org, "Customer sounds upset, escalate?", published=False)
    comment(org, "Our own copy of the customer's SMS", by=INTEGRATION_USER)
    comment(org, "Reply on a case the gateway never opened", parent=OTHER_CASE)
    sent = email(org, "Hello, here is your invoice.")
    email(org, "Thanks!", incoming=True)
    email(org, "Half-written answer", status=sf_replies.DRAFT)

    assert crm.poll_replies(sink, cursors) == 2
    assert sink.ids() == [f"CaseComment:{wanted}", f"EmailMessage:{sent}"]
    stored = json.loads(sink.items[0].body)
    assert stored["attributes"]["type"] == "CaseComment"
    assert (stored["CommentBody"], stored["CreatedBy"]["Name"]) == ("Your parcel left the depot today.", AGENT_NAME)
    assert {item.kind for item in sink.items} == {"agent_reply"}
    first, second = reply_queries(org)[-2:]
    assert "FROM CaseComment WHERE IsPublished = true" in first
    assert "FROM EmailMessage WHERE Incoming = false AND Status != '5'" in second
    assert f"ParentId IN (SELECT Id FROM Case WHERE {EXT} != null)" in first
    assert f"CreatedById != '{INTEGRATION_USER}'" in first
    assert first.endswith("ORDER BY SystemModstamp, Id LIMIT 200")
    userinfo = [c for c in mocked.calls if c.request.url.endswith("/services/oauth2/userinfo")]
    assert len(userinfo) == 1, "the integration user is looked up once and kept"
    assert userinfo[0].request.headers["Authorization"] == f"Bearer {SESSION_ID}"


def test_each_poll_is_one_query_per_object_counted_in_the_budget(org: ReplyOrg,
                                                                 mocked: responses.RequestsMock) -> None:
    org.usage = "api-usage=4321/100000"
    crm, sink, cursors = connector(org), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    before = len(mocked.calls)
    crm.poll_replies(sink, cursors)
    assert [c.request.url.split("?")[0] for c in mocked.calls[before:]] == [f"{DATA}/query"] * 2
    assert crm.api.budget.used == 4321
    crm_comments_only = connector(org, reply_objects=["CaseComment"])
    before = len(mocked.calls)
    crm_comments_only.poll_replies(Sink(), cursors)
    assert len([c for c in mocked.calls[before:] if "/query" in c.request.url]) == 1


def test_cursor_advances_and_rows_sharing_an_instant_are_neither_lost_nor_repeated(org: ReplyOrg) -> None:
    crm, sink, cursors = connector(org, reply_poll_limit=2), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=5)
    same = [comment(org, f"reply {n}") for n in range(3)]  # one instant, more rows than one poll reads
    org.now += timedelta(seconds=1)
    later = comment(org, "reply 3")

    assert crm.poll_replies(sink, cursors) == 2
    state = cursors.get(crm.reply_cursor)["CaseComment"]
    assert state == {"since": "2026-11-29T10:00:05Z", "ids": sorted(same)[:2]}
    assert crm.poll_replies(sink, cursors) == 2
    assert crm.poll_replies(sink, cursors) == 0
    assert cursors.get(crm.reply_cursor)["CaseComment"] == {"since": "2026-11-29T10:00:06Z", "ids": [later]}

    late = comment(org, "committed late, same second as reply 3")
    assert crm.poll_replies(sink, cursors) == 1
    comment_ids = [i for i in sink.ids() if i.startswith("CaseComment:")]
    assert comment_ids == [f"CaseComment:{i}" for i in [*sorted(same), later, late]]
    assert "Id NOT IN" in reply_queries(org)[-2]


def test_many_rows_at_one_instant_are_read_in_id_order(org: ReplyOrg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf_replies, "IDS_BY_NAME", 2)
    crm, sink, cursors = connector(org, reply_poll_limit=2, reply_objects=["CaseComment"]), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=1)
    made = sorted(comment(org, f"bulk {n}") for n in range(7))
    for _ in range(5):
        crm.poll_replies(sink, cursors)
    assert sink.ids() == [f"CaseComment:{i}" for i in made]
    assert "(SystemModstamp > 2026-11-29T10:00:01Z OR (SystemModstamp = 2026-11-29T10:00:01Z AND Id > " \
        in reply_queries(org)[-1]
    assert len(cursors.get(crm.reply_cursor)["CaseComment"]["ids"]) == 3, "the cursor stays bounded"


def test_a_batch_cut_short_is_finished_by_the_next_poll(org: ReplyOrg) -> None:
    crm, sink, cursors = connector(org, reply_objects=["EmailMessage"]), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=1)
    made = [email(org, f"answer {n}") for n in range(3)]
    org.batch_size = 2
    assert crm.poll_replies(sink, cursors) == 2, "nextRecordsUrl is not followed: one call per poll"
    assert crm.poll_replies(sink, cursors) == 1
    assert sorted(sink.ids()) == sorted(f"EmailMessage:{i}" for i in made)


def test_rows_older_than_the_first_poll_or_the_age_limit_are_never_read(org: ReplyOrg) -> None:
    comment(org, "written before the gateway was set up")
    crm, sink, cursors = connector(org), Sink(), MemoryCursors()
    org.now += timedelta(seconds=1)
    assert crm.poll_replies(sink, cursors) == 0
    # a merge re-parents two-day-old comments onto a gateway Case: new SystemModstamp, old CreatedDate
    comment(org, "old comment of a merged case", created=org.now - timedelta(days=2))
    assert crm.poll_replies(sink, cursors) == 0
    anything = connector(org, reply_max_age_hours=0)
    assert anything.poll_replies(sink, cursors) == 1
    assert "CreatedDate >=" not in reply_queries(org)[-1]


def test_integration_users_rows_are_skipped_even_when_the_query_returns_them(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{INSTANCE}/services/oauth2/userinfo", json={"user_id": INTEGRATION_USER,
                                                             "organization_id": "00DR00000008oBTMAY"})
    stamp = sf_datetime(datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC))

    def record(record_id: str, by: str, body: str) -> dict[str, Any]:
        return {"attributes": {"type": "CaseComment", "url": f"/services/data/v59.0/sobjects/CaseComment/{record_id}"},
                "Id": record_id, "ParentId": CASE_ID, "CommentBody": body, "IsPublished": True,
                "CreatedById": by, "CreatedBy": {"attributes": {"type": "User", "url": ""}, "Name": "x"},
                "CreatedDate": stamp, "SystemModstamp": stamp}

    mocked.get(f"{DATA}/query", headers={"Sforce-Limit-Info": "api-usage=18/100000"}, json={
        "totalSize": 3, "done": True, "records": [
            record("00aR0000000Own1IAA", INTEGRATION_USER, "our own comment"),
            record("00aR0000000Own2IAA", AGENT_USER, "customer text\n\ngateway-ref: 0123456789abcdef"),
            record("00aR0000000AgtaIAA", AGENT_USER, "an agent's answer")]})
    crm = salesforce(reply_objects=["CaseComment"])
    crm.reply_clock = lambda: datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    sink = Sink()
    crm.poll_replies(sink, MemoryCursors())
    assert sink.ids() == ["CaseComment:00aR0000000AgtaIAA"]


def test_with_a_username_the_integration_user_is_found_by_soql(org: ReplyOrg, mocked: responses.RequestsMock) -> None:
    mocked.post("https://login.salesforce.com/services/oauth2/token", json={
        "access_token": ACCESS_TOKEN, "scope": "api", "instance_url": INSTANCE,
        "id": f"https://login.salesforce.com/id/00DR00000008oBTMAY/{INTEGRATION_USER}", "token_type": "Bearer"})
    org.records["User"] = {INTEGRATION_USER: {"Id": INTEGRATION_USER, "Username": "integration@acme.example"},
                           AGENT_USER: {"Id": AGENT_USER, "Username": "mira@acme.example"}}
    crm = connector(org, instance_url=None, session_id=None, username="integration@acme.example",
                    consumer_key=CONSUMER_KEY, private_key=PRIVATE_KEY, reply_objects=["CaseComment"])
    sink, cursors = Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=1)
    comment(org, "ours", by=INTEGRATION_USER)
    theirs = comment(org, "the agent's")
    crm.poll_replies(sink, cursors)
    assert sink.ids() == [f"CaseComment:{theirs}"]
    assert "SELECT Id FROM User WHERE Username = 'integration@acme.example' LIMIT 1" in org.queries
    assert org.queries.count("SELECT Id FROM User WHERE Username = 'integration@acme.example' LIMIT 1") == 1
    assert not [c for c in mocked.calls if "/oauth2/userinfo" in c.request.url]


# -- the API budget -------------------------------------------------------------------------------------------------
def test_no_query_while_the_budget_is_paused(org: ReplyOrg, mocked: responses.RequestsMock) -> None:
    clock = Clock()
    crm, sink, cursors = connector(org, clock=clock, budget_pause_seconds=600), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=1)
    comment(org, "Your parcel left the depot today.")
    crm.api.pause("daily API budget at 95001/100000, reserve 10000")
    before = len(mocked.calls)
    assert crm.poll_replies(sink, cursors) == 0
    assert len(mocked.calls) == before, "no API call is spent while paused"
    clock.now += 601
    assert crm.poll_replies(sink, cursors) == 1


def test_a_poll_that_spends_the_budget_down_stops_before_its_next_query(org: ReplyOrg,
                                                                        mocked: responses.RequestsMock) -> None:
    crm = connector(org, clock=Clock(), api_reserve_percent=5)
    org.usage = "api-usage=95001/100000"
    crm.poll_replies(Sink(), MemoryCursors())
    assert len(reply_queries(org)) == 1, "the EmailMessage query waits for the pause to end"
    assert crm.api.budget.reason.startswith("daily API budget at 95001/100000")


# -- rows to replies ------------------------------------------------------------------------------------------------
def test_a_polled_comment_becomes_the_agents_reply(org: ReplyOrg) -> None:
    crm, sink, cursors = connector(org), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=1)
    record_id = comment(org, "Your parcel left the depot today.")
    crm.poll_replies(sink, cursors)
    [reply] = crm.agent_replies(row(sink.items[0]), linked())
    assert reply.reply_id == record_id
    assert reply.conversation_id == CONVERSATION_ID
    assert reply.text == "Your parcel left the depot today."
    assert reply.created_at == datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)
    assert (reply.author, reply.author_id) == (AGENT_NAME, AGENT_USER)


def test_an_emails_quoted_history_is_left_out(org: ReplyOrg) -> None:
    crm, sink, cursors = connector(org, reply_objects=["EmailMessage"]), Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    org.now += timedelta(seconds=1)
    email(org, "It ships on Monday.\n\nOn Sat, Nov 28, 2026 at 9:00 AM Asha <asha@example.com> wrote:\n"
               "> Where is my order?\n")
    crm.poll_replies(sink, cursors)
    [reply] = crm.agent_replies(row(sink.items[0]), linked())
    assert reply.text == "It ships on Monday."


def test_rows_that_are_no_public_reply_or_have_no_conversation_give_none(org: ReplyOrg) -> None:
    crm = connector(org)
    base = {"attributes": {"type": "CaseComment", "url": ""}, "Id": "00aR0000000AbCdIAK", "ParentId": CASE_ID,
            "CommentBody": "internal remark", "IsPublished": False, "CreatedById": AGENT_USER,
            "CreatedDate": "2026-11-29T10:00:00.000+0000", "SystemModstamp": "2026-11-29T10:00:00.000+0000"}
    item = InboxItem("CaseComment:00aR0000000AbCdIAK", json.dumps(base).encode(), "application/json", "agent_reply")
    assert crm.agent_replies(row(item), linked()) == [], "an unpublished comment is never a reply"
    public = InboxItem(item.provider_id, json.dumps({**base, "IsPublished": True}).encode(), "application/json")
    assert crm.agent_replies(row(public), MemoryLinkStore()) == [], "a Case without a conversation"
    assert len(crm.agent_replies(row(public), linked())) == 1
    draft = {**base, "attributes": {"type": "EmailMessage"}, "TextBody": "draft", "Incoming": False, "Status": "5"}
    assert crm.agent_replies(row(InboxItem("EmailMessage:02sR0000000AbCdIAK", json.dumps(draft).encode(),
                                           "application/json")), linked()) == []
    with pytest.raises(PermanentError) as caught:
        crm.agent_replies(row(InboxItem("CaseComment:x", b"{}", "application/json")), linked())
    assert caught.value.code == "malformed_row"


# -- the signed reply hook ------------------------------------------------------------------------------------------
def signed_post(body: dict[str, Any], secret: str = REPLY_SECRET, timestamp: int | None = None) -> HookRequest:
    raw = json.dumps(body).encode()
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    headers = Headers({"Content-Type": "application/json", signed_replies.TIMESTAMP_HEADER: stamp,
                       signed_replies.SIGNATURE_HEADER: signed_replies.sign(secret, stamp, raw)})
    return HookRequest("POST", "/crm-hooks/sf", "", headers, raw, "https://gw.example.com/crm-hooks/sf")


def test_a_flow_posts_a_signed_reply_with_the_comment_id() -> None:
    crm = salesforce(reply_secret=REPLY_SECRET)
    request = signed_post({"conversation_id": CONVERSATION_ID, "reply_id": "00aR0000000AbCdIAK",
                           "text": "Your parcel left the depot today.", "author": AGENT_NAME,
                           "author_id": AGENT_USER, "created_at": "2026-11-29T10:00:01Z"})
    crm.verify_reply_hook(request)
    [item] = crm.split_reply_hook(request)
    assert item.provider_id == "reply:00aR0000000AbCdIAK"
    [reply] = crm.agent_replies(row(item), MemoryLinkStore())
    assert (reply.reply_id, reply.conversation_id, reply.author) == ("00aR0000000AbCdIAK", CONVERSATION_ID,
                                                                     AGENT_NAME)


def test_the_reply_hook_refuses_bad_signatures_and_is_off_without_a_secret() -> None:
    body = {"conversation_id": CONVERSATION_ID, "reply_id": "00aR0000000AbCdIAK", "text": "hi"}
    with pytest.raises(SignatureInvalid):
        salesforce(reply_secret=REPLY_SECRET).verify_reply_hook(signed_post(body, secret="another-secret"))
    with pytest.raises(SignatureInvalid):
        salesforce(reply_secret=REPLY_SECRET).verify_reply_hook(signed_post(body, timestamp=int(time.time()) - 900))
    with pytest.raises(SignatureInvalid):
        salesforce().verify_reply_hook(signed_post(body))
    assert "reply_secret" in repr(SalesforceConfig.model_fields)
    assert REPLY_SECRET not in repr(salesforce(reply_secret=REPLY_SECRET).config)


# -- notes for the agent --------------------------------------------------------------------------------------------
def test_a_note_is_a_private_case_comment_written_once(org: ReplyOrg, mocked: responses.RequestsMock) -> None:
    crm, links = connector(org), linked()
    crm.post_note(CONVERSATION_ID, "Not delivered: the customer opted out.", links, key="gw-note-sf-send-7-blocked")
    [note] = list(org.comments())
    assert note["ParentId"] == CASE_ID and note["IsPublished"] is False
    assert note["CommentBody"] == "Not delivered: the customer opted out.\n\ngateway-note: gw-note-sf-send-7-blocked"
    before = len(mocked.calls)
    crm.post_note(CONVERSATION_ID, "Not delivered: the customer opted out.", links, key="gw-note-sf-send-7-blocked")
    assert len(mocked.calls) == before and len(list(org.comments())) == 1
    sink, cursors = Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)  # starts at the note's own instant
    assert sink.items == [], "a note is never read back as a reply"


def test_an_acknowledgement_is_a_published_case_comment_never_read_back(org: ReplyOrg,
                                                                         mocked: responses.RequestsMock) -> None:
    crm, links = connector(org), linked()
    text = "Sent automatically to the customer on sms-main (acknowledgement):\n\nThanks, we got your message."
    crm.post_public_comment(CONVERSATION_ID, text, links, key="gw-note-sf-ack-c1")
    crm.post_public_comment(CONVERSATION_ID, text, links, key="gw-note-sf-ack-c1")
    [comment] = list(org.comments())
    assert comment["ParentId"] == CASE_ID and comment["IsPublished"] is True
    assert comment["CommentBody"] == f"{text}\n\ngateway-note: gw-note-sf-ack-c1"
    sink, cursors = Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)
    assert sink.items == [], "the gateway's own comment is never sent to the customer as an agent's reply"


def test_a_note_cut_short_is_looked_up_before_it_is_written_again(org: ReplyOrg) -> None:
    crm, links = connector(org), linked()
    key = "gw-note-sf-reply-00aR0000000AbCdIAK-no-channel-" + "x" * 40  # longer than a link key
    org.add("CaseComment", by=INTEGRATION_USER, ParentId=CASE_ID, IsPublished=False,
            CommentBody=f"Not sent.\n\ngateway-note: {key}")
    links.put("note", sf_replies.note_link_key(key), "", {"pending": True})  # the answer was lost
    crm.post_note(CONVERSATION_ID, "Not sent.", links, key=key)
    assert len(list(org.comments())) == 1
    assert links.get("note", sf_replies.note_link_key(key))[0].startswith("00a")


def test_a_note_finds_its_case_by_external_id_or_is_refused(org: ReplyOrg) -> None:
    crm, links = connector(org), MemoryLinkStore()
    crm.post_note(CONVERSATION_ID, "Not sent.", links, key="k1")
    assert links.get("conversation", CONVERSATION_ID)[0] == CASE_ID
    with pytest.raises(PermanentError) as caught:
        crm.post_note("f" * 32, "Not sent.", MemoryLinkStore(), key="k2")
    assert caught.value.code == "no_case"
    assert len(list(org.comments())) == 1


# -- settings -------------------------------------------------------------------------------------------------------
def test_reply_poll_settings() -> None:
    base = {"instance_url": INSTANCE, "session_id": SESSION_ID}
    assert SalesforceConfig(**base).reply_poll_seconds == 60
    assert salesforce(reply_poll_seconds=0).reply_poll_seconds == 0
    for bad in ({"reply_poll_seconds": 5}, {"reply_objects": []}, {"reply_objects": ["Task"]},
                {"reply_poll_limit": 2001}):
        with pytest.raises(ValidationError):
            SalesforceConfig(**base, **bad)


# -- end to end: SMS in, Case written, agent's comment polled, reply queued and sent ------------------------------
class SendingTwilio(TwilioChannel, ReplySender):
    """The Twilio channel with a recorded send: replies reach it through the real send queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[SendRequest] = []

    def send(self, request: SendRequest) -> SendResult:
        if "refuse" in (request.message.text or ""):
            raise PermanentError("the customer's number cannot receive SMS", code="invalid_recipient")
        self.sent.append(request)
        return SendResult(f"SM{request.send_id:032x}")

    def reconcile(self, request: SendRequest) -> SendResult | None:
        return None


E2E_MAPPING = """
crm: salesforce
fields:
  contact.LastName: "{{ message.sender.identifiers[0].value }}"
  case.Subject: "SMS from {{ message.sender.identifiers[0].value }}"
  comment: "{{ message.text }}"
  public: true
"""


@pytest.fixture
def e2e(write_config: Callable[..., Path], tmp_path: Path, org: ReplyOrg) -> Iterator[Runtime]:
    (tmp_path / "sf.yaml").write_text(E2E_MAPPING)
    path = write_config(f"""
        storage: {{url: "{{storage_url}}"}}
        server: {{public_url: "{PUBLIC_URL}"}}
        channels:
          sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
        crms:
          sf: {{type: salesforce, instance_url: "{INSTANCE}", session_id: "{SESSION_ID}",
                reply_secret: "{REPLY_SECRET}", mapping: sf.yaml}}
        routes:
          - {{from: [sms-main], to: sf}}
    """)
    registry = Registry([*(entry for entry in Registry.from_entry_points().items() if entry[0] != "twilio"),
                         ("twilio", SendingTwilio)])
    rt = build_runtime(load_config(path), registry=registry, http=requests.Session())
    rt.crms["sf"].reply_clock = lambda: org.now  # type: ignore[attr-defined]
    yield rt
    rt.close()


def drain_all(rt: Runtime) -> None:
    stages = [PipelineWorker(rt, "p"), DeliveryWorker(rt, "d"), SendWorker(rt, "s"), NoteWorker(rt, "n")]
    while sum(drain_once(stage) for stage in stages):
        pass


def test_sms_to_case_to_agent_comment_to_reply_sent_once(e2e: Runtime, org: ReplyOrg) -> None:
    rt = e2e
    store(rt, sms("SM" + "a" * 32, "+14155550100", "Where is my parcel?"))
    drain(rt)
    [case_id] = [i for i, case in org.records["Case"].items() if case.get(EXT) not in (None, CONVERSATION_ID)]
    [ours] = [c for c in org.comments() if c["ParentId"] == case_id]
    assert ours["IsPublished"] is True, "the gateway's own comment is public here, and must still not come back"
    poll = reply_poll_job(rt, "sf", rt.crms["sf"])  # type: ignore[arg-type]
    poll()  # the first poll starts the cursor

    org.now += timedelta(seconds=40)
    agent_comment = comment(org, "It left our depot this morning.", parent=case_id)
    poll()
    drain_all(rt)

    with rt.engine.connect() as conn:
        rows = conn.execute(select(sends.c.status, sends.c.channel, sends.c.crm, sends.c.conversation_id,
                                   messages.c.data).join(messages, messages.c.id == sends.c.message_id)).all()
    [(status, channel, crm, conversation_id, data)] = rows
    assert (status, channel, crm) == ("sent", "sms-main", "sf")
    assert conversation_id == org.records["Case"][case_id][EXT]
    assert data["text"] == "It left our depot this morning."
    assert data["extras"]["reply_id"] == agent_comment
    [request] = rt.channels["sms-main"].sent  # type: ignore[attr-defined]
    assert request.message.recipients[0].identifiers[0].value == "+14155550100"

    # the same reply posted by a Flow to the signed endpoint, and polled again: still sent once
    client = create_app(rt).test_client()
    hook = signed_post({"conversation_id": conversation_id, "reply_id": agent_comment,
                        "text": "It left our depot this morning."})
    answer = client.post("/crm-hooks/sf", data=hook.body, headers=dict(hook.headers.items()))
    assert answer.status_code == 200
    drain_all(rt)
    assert len(rt.channels["sms-main"].sent) == 1  # type: ignore[attr-defined]

    # a reply the channel refuses becomes a private note on the Case, never read back as a reply
    org.now += timedelta(seconds=40)
    comment(org, "Please refuse this one", parent=case_id)
    poll()
    drain_all(rt)
    notes = [c for c in org.comments() if c["IsPublished"] is False]
    assert len(notes) == 1 and notes[0]["ParentId"] == case_id
    assert notes[0]["CommentBody"].startswith("Not delivered: the customer's number cannot receive SMS")
    org.now += timedelta(seconds=40)
    poll()
    drain_all(rt)
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sends)).scalar_one() == 2
