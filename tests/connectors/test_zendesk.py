"""Zendesk CRM: the conformance suite, and the exact requests Zendesk documents.

Response bodies in ``tests/fixtures/zendesk`` are Zendesk's own examples from its OpenAPI file
(https://developer.zendesk.com/zendesk/oas.yaml): ``UserCreateResponseExample``, ``TicketResponseExample``,
``TicketUpdateResponseExample``, ``TicketAuditsForTicketResponseExample``, ``TicketsResponseExample``,
``CurrentUserResponseExample``; the 404 body is the one quoted in the same file. Zendesk publishes no example of
its 422 ``RecordInvalid`` and 400 ``IdempotentRequestError`` bodies: those fixtures carry the shape its SDKs parse
(``error``, ``description``, ``details.{field}[].description``).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from pydantic import ValidationError
from responses import matchers

from connectors.zendesk import MARKER, ZendeskConfig, ZendeskCrm
from gateway.errors import OnlineCheckFailed, PermanentError, RetryableError
from gateway.plugins import ConnectorContext, CrmConnector
from tests.conformance.crm import (
    CONVERSATION_ID,
    CUSTOMER_ID,
    CUSTOMER_PHONE,
    ContactMergeCases,
    ContactRecordCases,
    DirectorySyncCases,
    HttpCrmConformance,
    MemoryLinkStore,
    delivery_item,
    twilio_sms,
)
from tests.fake_zendesk import FakeZendesk

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "zendesk"
API = "https://acme.zendesk.com/api/v2"
EMAIL = "agent@example.com"
API_TOKEN = "test-zendesk-token"
OAUTH_TOKEN = "test-zendesk-oauth-token"
USER_ID = 9873843  # id in UserCreateResponseExample
TICKET_ID = 35436  # id in TicketResponseExample and TicketsResponseExample
TICKET_URL = f"{API}/tickets/{TICKET_ID}"
JSON = {"Content-Type": "application/json"}


def fixture(name: str) -> dict[str, Any]:
    """A documented Zendesk response body."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def zendesk(http: requests.Session | None = None, **settings: Any) -> ZendeskCrm:
    # the look-up before a user is created has tests of its own (test_zendesk_users.py)
    values = {"subdomain": "acme", "email": EMAIL, "api_token": API_TOKEN, "search_before_create": False, **settings}
    values = {k: v for k, v in values.items() if v is not None}
    config = ZendeskConfig(**values)
    return ZendeskCrm("helpdesk", config, ConnectorContext(http=http or requests.Session()))


def audits_with_marker(message_id: str) -> dict[str, Any]:
    """The documented audits page, plus the audit our earlier write left (its metadata under ``custom``)."""
    body = fixture("ticket_audits")
    ours = copy.deepcopy(body["audits"][0])
    ours.update(id=2127301199, ticket_id=TICKET_ID, metadata={"custom": {MARKER: message_id}, "system": {}})
    body["audits"].append(ours)
    return body


def sent_json(call: Any) -> dict[str, Any]:
    return json.loads(call.request.body)


def writes(mocked: responses.RequestsMock) -> list[Any]:
    return [c for c in mocked.calls if c.request.method in ("POST", "PUT") and "/tickets" in c.request.url]


class MockedZendesk:
    """A stateful Zendesk behind ``responses``: users by external id, tickets, comments and audits, with documented
    response bodies."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.audits: dict[int, list[dict[str, Any]]] = {}
        self.idempotency: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def install(self, mocked: responses.RequestsMock) -> None:
        mocked.add_callback("POST", f"{API}/users/create_or_update", callback=self.upsert_user)
        mocked.add_callback("GET", f"{API}/users/search", callback=self.search_users)
        mocked.add_callback("POST", f"{API}/tickets", callback=self.create_ticket)
        mocked.add_callback("GET", f"{API}/tickets", callback=self.list_tickets)
        mocked.add_callback("PUT", re.compile(rf"{API}/tickets/\d+"), callback=self.update_ticket)
        mocked.add_callback("GET", re.compile(rf"{API}/tickets/\d+/audits"), callback=self.list_audits)
        mocked.add_callback("GET", re.compile(rf"{API}/tickets/\d+$"), callback=self.show_ticket)

    def _audit(self, ticket_id: int, payload: dict[str, Any]) -> None:
        audit = copy.deepcopy(fixture("ticket_audits")["audits"][0])
        audit.update(id=len(self.audits.get(ticket_id, [])) + 1, ticket_id=ticket_id,
                     metadata={"custom": payload.get("metadata", {}), "system": {}})
        self.audits.setdefault(ticket_id, []).append(audit)

    def upsert_user(self, request: Any) -> tuple[int, dict[str, str], str]:
        """201 with the new user, 200 with the one holding the external id (updated with the given fields)."""
        given = json.loads(request.body)["user"]
        user = self.users.get(given["external_id"])
        created = user is None
        if user is None:
            user = fixture("user_create_or_update")["user"]
            user["id"] = USER_ID + len(self.users)
            self.users[given["external_id"]] = user
        user.update({key: given[key] for key in ("name", "email", "phone", "external_id") if key in given})
        return (201 if created else 200), JSON, json.dumps({"user": user})

    def search_users(self, request: Any) -> tuple[int, dict[str, str], str]:
        """``users/search?external_id=``: the user holding exactly that external id."""
        wanted = parse_qs(urlsplit(request.url).query).get("external_id", [""])[0]
        found = [user for external_id, user in self.users.items() if external_id == wanted]
        return 200, JSON, json.dumps({"users": found, "next_page": None, "previous_page": None, "count": len(found)})

    def create_ticket(self, request: Any) -> tuple[int, dict[str, str], str]:
        key = request.headers.get("Idempotency-Key")
        if key in self.idempotency:
            body, cached = self.idempotency[key]
            if body != request.body:
                return 400, JSON, json.dumps(fixture("error_400_idempotency_conflict"))
            return 201, {**JSON, "x-idempotency-lookup": "hit"}, json.dumps(cached)
        payload = json.loads(request.body)["ticket"]
        ticket = fixture("ticket_create")["ticket"]
        ticket.update(id=TICKET_ID + len(self.tickets), external_id=payload.get("external_id"),
                      requester_id=payload.get("requester_id"), status="open", tags=list(payload.get("tags") or []))
        self.tickets[ticket["id"]] = ticket
        self._audit(ticket["id"], payload)
        response = {"ticket": ticket}
        if key:
            self.idempotency[key] = (request.body, response)
        return 201, {**JSON, "x-idempotency-lookup": "miss"}, json.dumps(response)

    def list_tickets(self, request: Any) -> tuple[int, dict[str, str], str]:
        wanted = parse_qs(urlsplit(request.url).query).get("external_id", [None])[0]
        found = [t for t in self.tickets.values() if t["external_id"] == wanted]
        return 200, JSON, json.dumps({"tickets": found, "count": len(found), "next_page": None,
                                      "previous_page": None})

    def update_ticket(self, request: Any) -> tuple[int, dict[str, str], str]:
        ticket_id = int(urlsplit(request.url).path.rsplit("/", 1)[1])
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return 404, JSON, json.dumps(fixture("error_404_record_not_found"))
        if ticket["status"] == "closed":
            return 422, JSON, json.dumps(fixture("error_422_closed_ticket"))
        given = json.loads(request.body)["ticket"]
        if {"additional_tags", "remove_tags"} & given.keys():  # documented for update_many only
            return 400, JSON, json.dumps({"error": "InvalidValue", "description": "not an Update Ticket field"})
        if given.get("safe_update") and given.get("updated_stamp") != ticket["updated_at"]:
            return 409, JSON, json.dumps({"error": "UpdateConflict", "description": "Safe Update prevented the "
                                          "update due to outdated ticket data. Please fetch the latest ticket data "
                                          "and try again."})
        self._audit(ticket_id, given)
        ticket["tags"] = list(given.get("tags", ticket["tags"]))
        ticket["updated_at"] = f"2011-05-05T11:{len(self.audits[ticket_id]):02d}:00Z"
        body = fixture("ticket_update")
        body["ticket"].update(id=ticket_id, tags=ticket["tags"], updated_at=ticket["updated_at"])
        return 200, JSON, json.dumps(body)

    def show_ticket(self, request: Any) -> tuple[int, dict[str, str], str]:
        ticket = self.tickets.get(int(urlsplit(request.url).path.rsplit("/", 1)[1]))
        if ticket is None:
            return 404, JSON, json.dumps(fixture("error_404_record_not_found"))
        return 200, JSON, json.dumps({"ticket": ticket})

    def written_messages(self) -> list[str]:
        """The gateway message ids in the audits of the writes that landed, one per message per write."""
        return [message_id for audits in self.audits.values() for audit in audits
                for message_id in str(audit["metadata"]["custom"].get(MARKER) or "").split(",") if message_id]

    def list_audits(self, request: Any) -> tuple[int, dict[str, str], str]:
        ticket_id = int(urlsplit(request.url).path.split("/")[-2])
        return 200, JSON, json.dumps({"audits": self.audits.get(ticket_id, []),
                                      "meta": {"has_more": False, "after_cursor": None, "before_cursor": None},
                                      "links": {"next": None, "prev": None}})


class TestZendeskConformance(HttpCrmConformance, DirectorySyncCases, ContactMergeCases, ContactRecordCases):
    """Zendesk passes the shared CRM suite against a stateful fake built from the documented bodies."""

    secrets: ClassVar[tuple[str, ...]] = (API_TOKEN,)
    helpdesk: MockedZendesk

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return zendesk(http)

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        self.helpdesk = MockedZendesk()
        self.helpdesk.install(mocked)

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        return len(writes(mocked))

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        return self.helpdesk.written_messages()

    def rename_contact(self, mocked: responses.RequestsMock, customer_id: str, name: str) -> None:
        self.helpdesk.users[customer_id]["name"] = name

    def contact_name(self, mocked: responses.RequestsMock, customer_id: str) -> str:
        return str(self.helpdesk.users[customer_id]["name"])

    def mock_directory(self, mocked: responses.RequestsMock, records: dict[str, list[tuple[str, str]]]) -> None:
        users = [{"id": int(remote_id), "name": f"User {remote_id}", "role": "end-user", "active": True,
                  "suspended": False, "shared_phone_number": False, **{kind: value for kind, value in identifiers}}
                 for remote_id, identifiers in records.items()]
        mocked.get(f"{API}/incremental/users/cursor", json={
            "users": users, "after_cursor": "c1", "after_url": f"{API}/incremental/users/cursor.json?cursor=c1",
            "before_cursor": None, "before_url": None, "end_of_stream": True})

    def mock_merge(self, mocked: responses.RequestsMock) -> None:
        mocked.put(re.compile(rf"{API}/users/\d+/merge"), json=fixture("user_create_or_update"))

    def merges(self, mocked: responses.RequestsMock) -> list[tuple[str, str]]:
        return [(str(sent_json(call)["user"]["id"]), urlsplit(call.request.url).path.split("/")[-2])
                for call in mocked.calls if call.request.url.endswith("/merge")]

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=201)
        mocked.post(f"{API}/tickets", status=status, body=body, headers=headers)
        if status == 400:  # an idempotency conflict is looked up before it is believed
            mocked.get(f"{API}/tickets", json={"tickets": [], "count": 0, "next_page": None, "previous_page": None})

    def error_body(self, status: int) -> tuple[str, str]:
        name = {400: "error_400_idempotency_conflict", 422: "error_422_record_invalid"}[status]
        return json.dumps(fixture(name)), fixture(name)["error"]


def answer_from(fake: FakeZendesk, mocked: responses.RequestsMock) -> None:
    """Answer every request to the API from ``fake``, in process (its server is never started)."""

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        path = parts.path.removesuffix(".json")
        raw = request.body or b""
        raw = raw.encode() if isinstance(raw, str) else raw
        body = json.loads(raw) if raw and path != "/api/v2/uploads" else {}
        headers = {key.lower(): value for key, value in request.headers.items()}
        status, answer, extra = fake.handle(request.method, path, parse_qs(parts.query), headers, body, raw)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return status, {"Content-Type": "application/json", **extra}, text

    for method in ("GET", "POST", "PUT"):
        mocked.add_callback(method, re.compile(rf"{re.escape(API)}/.*"), callback=callback)


class TestZendeskBatchConformance(TestZendeskConformance):
    """The same suite with every batch of two or more conversations on the batch endpoints (``bulk_threshold`` 2),
    against the fake Zendesk that runs their jobs; a refused first write is the first ``tickets/create_many``."""

    fake: FakeZendesk

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        crm = zendesk(http, bulk_threshold=2)
        crm.client.sleep = lambda _seconds: None
        return crm

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        self.fake = FakeZendesk(job_delay_seconds=0.0)
        self.fake.close()
        answer_from(self.fake, mocked)

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        return self.fake.comment_count()

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        return list(self.fake.comment_counts().elements())

    def rename_contact(self, mocked: responses.RequestsMock, customer_id: str, name: str) -> None:
        self.fake.rename_user(customer_id, name)

    def contact_name(self, mocked: responses.RequestsMock, customer_id: str) -> str:
        return str(self.fake.user_by_external_id(customer_id)["name"])

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        super().mock_failure(mocked, status=status, body=body, headers=headers)
        mocked.post(f"{API}/tickets/create_many", status=status, body=body, headers=headers)


class TestZendeskOAuthConformance(TestZendeskConformance):
    """The same suite with OAuth bearer-token auth."""

    secrets: ClassVar[tuple[str, ...]] = (OAUTH_TOKEN,)

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return zendesk(http, email=None, api_token=None, oauth_token=OAUTH_TOKEN)


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def expected_user() -> dict[str, Any]:
    return {"user": {"name": CUSTOMER_PHONE, "external_id": CUSTOMER_ID, "skip_verify_email": True,
                     "phone": CUSTOMER_PHONE}}


# -- first message: user upsert, then a ticket ----------------------------------------------------------------------
def test_first_message_upserts_the_user_and_creates_a_ticket(mocked: responses.RequestsMock) -> None:
    item = delivery_item(crm="helpdesk")
    user_call = mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=201,
                            match=[matchers.json_params_matcher(expected_user(), strict_match=True)])
    ticket_call = mocked.post(
        f"{API}/tickets", json=fixture("ticket_create"), status=201, headers={"x-idempotency-lookup": "miss"},
        match=[matchers.header_matcher({"Idempotency-Key": item.idempotency_key, "Accept": "application/json",
                                        "Content-Type": "application/json"}),
               matchers.json_params_matcher({"ticket": {
                   "comment": {"body": "My order #1234 never arrived", "public": True, "author_id": USER_ID},
                   "requester_id": USER_ID,
                   "external_id": CONVERSATION_ID,
                   "metadata": {MARKER: item.message.id},
                   "subject": f"SMS from {CUSTOMER_PHONE}",
                   "priority": "normal",
                   "tags": ["channel-gateway", "sms"],
               }}, strict_match=True)])
    links = MemoryLinkStore()

    result = zendesk().deliver(item, links)

    assert (result.operation, result.remote_id) == ("ticket_created", str(TICKET_ID))
    assert user_call.call_count == ticket_call.call_count == 1
    assert "role" not in sent_json(mocked.calls[0])["user"]
    assert links.get("customer", CUSTOMER_ID) == (str(USER_ID), {"placeholder": CUSTOMER_PHONE})
    assert links.get("conversation", CONVERSATION_ID) == (
        str(TICKET_ID), {"status": "open", "updated_at": "2011-05-05T10:38:52Z", "priority": "high",
                                 "tags": ["enterprise", "other_tag"]})


def test_user_upsert_accepts_200_for_an_existing_user(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=200,
                headers={"Location": f"/api/v2/users/{USER_ID}.json"})
    mocked.post(f"{API}/tickets", json=fixture("ticket_create"), status=201)
    links = MemoryLinkStore()
    zendesk().deliver(delivery_item(), links)
    assert links.get("customer", CUSTOMER_ID) == (str(USER_ID), {"placeholder": CUSTOMER_PHONE})


def test_known_customer_is_not_upserted_again(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{API}/tickets", json=fixture("ticket_create"), status=201)
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, "777")
    zendesk().deliver(delivery_item(), links)
    assert sent_json(mocked.calls[0])["ticket"]["requester_id"] == 777
    assert sent_json(mocked.calls[0])["ticket"]["comment"]["author_id"] == 777


# -- the conversation goes on: comments, closed and deleted tickets ------------------------------------------------
def linked() -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, str(USER_ID))
    links.put("conversation", CONVERSATION_ID, str(TICKET_ID), {"status": "open", "tags": ["channel-gateway", "sms"]})
    return links


def second_item(**changes: Any) -> Any:
    return replace(delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32), crm="helpdesk", opened=False),
                   **changes)


def test_second_message_adds_a_comment_to_the_ticket(mocked: responses.RequestsMock) -> None:
    item = second_item()
    put = mocked.put(TICKET_URL, json=fixture("ticket_update"), match=[
        matchers.header_matcher({"Content-Type": "application/json", "Accept": "application/json"}),
        matchers.json_params_matcher({"ticket": {
            "comment": {"body": "Any news?", "public": True, "author_id": USER_ID},
            "metadata": {MARKER: item.message.id}}}, strict_match=True)])  # the ticket has the channel's tags

    result = zendesk().deliver(item, linked())

    assert (result.operation, result.remote_id) == ("comment_added", str(TICKET_ID))
    assert put.call_count == 1
    assert len(mocked.calls) == 1


def test_closed_ticket_gets_a_follow_up_ticket(mocked: responses.RequestsMock) -> None:
    item = second_item()
    mocked.put(TICKET_URL, json=fixture("error_422_closed_ticket"), status=422)
    followup = fixture("ticket_create")
    followup["ticket"]["id"] = 35437
    post = mocked.post(f"{API}/tickets", json=followup, status=201, match=[
        matchers.header_matcher({"Idempotency-Key": f"{item.idempotency_key}-followup-{TICKET_ID}"}),
        matchers.json_params_matcher({"ticket": {
            "comment": {"body": "Any news?", "public": True, "author_id": USER_ID},
            "requester_id": USER_ID, "external_id": CONVERSATION_ID, "metadata": {MARKER: item.message.id},
            "subject": f"SMS from {CUSTOMER_PHONE}", "priority": "normal", "tags": ["channel-gateway", "sms"],
            "via_followup_source_id": TICKET_ID}}, strict_match=True)])
    links = linked()

    result = zendesk().deliver(item, links)

    assert (result.operation, result.remote_id) == ("followup_ticket_created", "35437")
    assert post.call_count == 1
    assert links.get("conversation", CONVERSATION_ID) == (
        "35437", {"status": "open", "updated_at": "2011-05-05T10:38:52Z", "priority": "high",
                                 "tags": ["enterprise", "other_tag"]})


def test_deleted_ticket_is_replaced_by_a_new_one(mocked: responses.RequestsMock) -> None:
    item = second_item()
    mocked.put(TICKET_URL, json=fixture("error_404_record_not_found"), status=404)
    recreated = fixture("ticket_create")
    recreated["ticket"]["id"] = 35440
    post = mocked.post(f"{API}/tickets", json=recreated, status=201,
                       match=[matchers.header_matcher({"Idempotency-Key": item.idempotency_key})])
    links = linked()

    result = zendesk().deliver(item, links)

    assert (result.operation, result.remote_id) == ("ticket_recreated", "35440")
    assert "via_followup_source_id" not in sent_json(post.calls[0])["ticket"]
    assert links.get("conversation", CONVERSATION_ID)[0] == "35440"


# -- retries after an uncertain attempt ------------------------------------------------------------------------------
def audits_url() -> str:
    return f"{TICKET_URL}/audits"


def test_retry_finds_its_marker_in_the_audits_and_writes_nothing(mocked: responses.RequestsMock) -> None:
    item = second_item(attempt=2)
    mocked.get(audits_url(), json=audits_with_marker(item.message.id),
               match=[matchers.query_param_matcher({"page[size]": "100"})])

    result = zendesk().deliver(item, linked())

    assert result.operation == "already_written"
    assert writes(mocked) == []


def test_retry_without_its_marker_writes_the_comment_once(mocked: responses.RequestsMock) -> None:
    item = second_item(attempt=2)
    mocked.get(audits_url(), json=fixture("ticket_audits"))
    put = mocked.put(TICKET_URL, json=fixture("ticket_update"))

    assert zendesk().deliver(item, linked()).operation == "comment_added"
    assert put.call_count == 1


def test_retry_follows_audit_pages(mocked: responses.RequestsMock) -> None:
    item = second_item(attempt=2)
    after = f"{audits_url()}.json?page%5Bafter%5D=xyz&page%5Bsize%5D=100"
    first = fixture("ticket_audits")
    first.update(meta={"has_more": True, "after_cursor": "xyz", "before_cursor": None},
                 links={"next": after, "prev": None})
    mocked.get(audits_url(), json=first, match=[matchers.query_param_matcher({"page[size]": "100"})])
    mocked.get(f"{audits_url()}.json", json=audits_with_marker(item.message.id),
               match=[matchers.query_param_matcher({"page[after]": "xyz", "page[size]": "100"})])

    assert zendesk().deliver(item, linked()).operation == "already_written"
    assert writes(mocked) == []


def test_retry_without_a_link_finds_the_ticket_by_external_id(mocked: responses.RequestsMock) -> None:
    item = delivery_item(crm="helpdesk", attempt=2)
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, str(USER_ID))
    mocked.get(f"{API}/tickets", json=fixture("tickets_by_external_id"),
               match=[matchers.query_param_matcher({"external_id": CONVERSATION_ID})])
    mocked.get(audits_url(), json=audits_with_marker(item.message.id))

    result = zendesk().deliver(item, links)

    assert (result.operation, result.remote_id) == ("already_written", str(TICKET_ID))
    assert writes(mocked) == []
    assert links.get("conversation", CONVERSATION_ID) == (str(TICKET_ID), {"status": "open", "priority": "high"})


def test_retry_without_a_link_or_ticket_creates_it_with_the_same_key(mocked: responses.RequestsMock) -> None:
    item = delivery_item(crm="helpdesk", attempt=2)
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, str(USER_ID))
    mocked.get(f"{API}/tickets", json={"tickets": [], "count": 0, "next_page": None, "previous_page": None})
    post = mocked.post(f"{API}/tickets", json=fixture("ticket_create"), status=201,
                       match=[matchers.header_matcher({"Idempotency-Key": item.idempotency_key})])

    assert zendesk().deliver(item, links).operation == "ticket_created"
    assert post.call_count == 1


def test_crash_before_links_were_saved_is_replayed_without_duplicates() -> None:
    fake = MockedZendesk()
    item = delivery_item(crm="helpdesk")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        zendesk().deliver(item, MemoryLinkStore())  # the links of this attempt are lost in the crash
        result = zendesk().deliver(replace(item, attempt=2), MemoryLinkStore())
        assert result.operation == "already_written"
        assert len(writes(mock)) == 1
    assert len(fake.tickets) == 1


# -- auth --------------------------------------------------------------------------------------------------------------
def test_api_token_auth_is_basic_email_slash_token(mocked: responses.RequestsMock) -> None:
    expected = "Basic " + base64.b64encode(f"{EMAIL}/token:{API_TOKEN}".encode()).decode()
    mocked.get(f"{API}/users/me", json=fixture("users_me"),
               match=[matchers.header_matcher({"Authorization": expected})])
    assert zendesk().check_online() == "authenticated as Johnny Agent (agent)"


def test_oauth_auth_is_a_bearer_token(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/users/me", json=fixture("users_me"),
               match=[matchers.header_matcher({"Authorization": f"Bearer {OAUTH_TOKEN}"})])
    crm = zendesk(email=None, api_token=None, oauth_token=OAUTH_TOKEN)
    assert crm.check_online() == "authenticated as Johnny Agent (agent)"


def test_check_online_refuses_an_anonymous_answer(mocked: responses.RequestsMock) -> None:
    # /users/me is allowed for anonymous users: bad credentials can still answer 200
    mocked.get(f"{API}/users/me", json={"user": {"id": None, "name": "Anonymous user", "role": "end-user"}})
    with pytest.raises(OnlineCheckFailed, match="did not accept the credentials"):
        zendesk().check_online()


def test_base_url_overrides_the_subdomain(mocked: responses.RequestsMock) -> None:
    mocked.get("http://127.0.0.1:9999/api/v2/users/me", json=fixture("users_me"))
    assert "Johnny Agent" in zendesk(base_url="http://127.0.0.1:9999/").check_online()


@pytest.mark.parametrize("settings", [
    {"oauth_token": OAUTH_TOKEN},
    {"api_token": None},
    {"email": None},
    {"subdomain": "Acme Corp"},
])
def test_config_refuses_bad_auth_and_subdomains(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        zendesk(**settings)


# -- errors ------------------------------------------------------------------------------------------------------------
def test_record_invalid_names_the_field(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{API}/users/create_or_update", json=fixture("error_422_record_invalid"), status=422)
    with pytest.raises(PermanentError) as caught:
        zendesk().deliver(delivery_item(), MemoryLinkStore())
    assert caught.value.code == "RecordInvalid"
    assert caught.value.field == "email"
    assert "Email: roge@example is not properly formatted" in str(caught.value)


def test_rate_limit_with_a_text_body(mocked: responses.RequestsMock) -> None:
    # the 429 example of Zendesk's rate-limit guide: text/html body, Retry-After in seconds
    mocked.put(TICKET_URL, status=429, headers={"Retry-After": "93", "Content-Type": "text/html; charset=utf-8"},
               body="Rate limit for ticket updates exceeded, please wait before updating this ticket again")
    with pytest.raises(RetryableError) as caught:
        zendesk().deliver(second_item(), linked())
    assert (caught.value.code, caught.value.retry_after) == ("429", 93.0)


def test_idempotency_conflict_without_a_ticket_is_permanent(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=201)
    mocked.post(f"{API}/tickets", json=fixture("error_400_idempotency_conflict"), status=400)
    lookup = mocked.get(f"{API}/tickets", json={"tickets": [], "count": 0, "next_page": None, "previous_page": None})
    with pytest.raises(PermanentError) as caught:
        zendesk().deliver(delivery_item(), MemoryLinkStore())
    assert caught.value.code == "IdempotentRequestError"
    assert "don't match the given idempotency key" in str(caught.value)
    assert lookup.call_count == 1


def test_idempotency_conflict_adopts_the_ticket_the_first_request_made(mocked: responses.RequestsMock) -> None:
    """The same key with another body (an attachment uploaded again gets a new token): the first request's
    ticket exists, so it is adopted instead of the message being dead-lettered."""
    item = delivery_item()
    mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=201)
    mocked.post(f"{API}/tickets", json=fixture("error_400_idempotency_conflict"), status=400)
    existing = fixture("ticket_create")["ticket"]
    mocked.get(f"{API}/tickets", json={"tickets": [existing], "count": 1, "next_page": None, "previous_page": None})
    links = MemoryLinkStore()
    result = zendesk().deliver(item, links)
    assert result.remote_id == str(existing["id"])
    assert links.get("conversation", item.conversation.id)[0] == str(existing["id"])


def test_retry_after_a_lost_follow_up_link_writes_no_second_follow_up() -> None:
    fake = MockedZendesk()
    item = second_item()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        links = MemoryLinkStore()
        zendesk().deliver(delivery_item(crm="helpdesk"), links)
        fake.tickets[TICKET_ID]["status"] = "closed"
        stale = MemoryLinkStore()
        stale.links = dict(links.links)  # the attempt below dies before its new link is saved
        assert zendesk().deliver(item, links).operation == "followup_ticket_created"
        fake.idempotency.clear()  # Idempotency-Keys expire after two hours

        result = zendesk().deliver(replace(item, attempt=2), stale)

        sent = [(c.request.method, c.response.status_code) for c in writes(mock)]
        assert sent == [("POST", 201), ("PUT", 422), ("POST", 201), ("PUT", 422)]  # 422: ticket closed
    assert result.operation == "already_written"
    assert len(fake.tickets) == 2
    assert stale.get("conversation", CONVERSATION_ID)[0] == result.remote_id == str(TICKET_ID + 1)


def stamped_links(status: str = "open", tags: tuple[str, ...] = ("channel-gateway", "sms")) -> MemoryLinkStore:
    links = linked()
    links.put("conversation", CONVERSATION_ID, str(TICKET_ID),
              {"status": status, "updated_at": "2026-01-01T10:00:00Z", "tags": list(tags)})
    return links


def test_updates_are_guarded_by_the_stamp_of_our_last_write(mocked: responses.RequestsMock) -> None:
    item = second_item()
    put = mocked.put(TICKET_URL, json=fixture("ticket_update"), match=[matchers.json_params_matcher(
        {"ticket": {"comment": {"body": "Any news?", "public": True, "author_id": USER_ID},
                    "metadata": {MARKER: item.message.id},
                    "safe_update": True, "updated_stamp": "2026-01-01T10:00:00Z"}}, strict_match=True)])
    result = zendesk().deliver(item, stamped_links())
    assert result.operation == "comment_added" and put.call_count == 1


def test_the_channel_s_tags_are_added_to_the_ticket_s_list_under_the_stamp(mocked: responses.RequestsMock) -> None:
    """Update Ticket documents ``tags`` (the whole list, replacing the ticket's), not ``additional_tags``: the list
    the link holds from our last write's answer is sent with the channel's tags added, guarded by that answer's
    stamp (https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-
    overwriting-existing-tags/)."""
    item = second_item()
    answer = fixture("ticket_update")
    answer["ticket"].update(tags=["vip", "sms", "channel-gateway"], updated_at="2026-01-01T10:05:00Z")
    put = mocked.put(TICKET_URL, json=answer, match=[matchers.json_params_matcher(
        {"ticket": {"comment": {"body": "Any news?", "public": True, "author_id": USER_ID},
                    "tags": ["vip", "sms", "channel-gateway"], "metadata": {MARKER: item.message.id},
                    "safe_update": True, "updated_stamp": "2026-01-01T10:00:00Z"}}, strict_match=True)])
    links = stamped_links(tags=("vip", "sms"))
    assert zendesk().deliver(item, links).operation == "comment_added" and put.call_count == 1
    assert links.get("conversation", CONVERSATION_ID)[1]["tags"] == ["vip", "sms", "channel-gateway"]


def test_a_ticket_solved_since_our_last_write_starts_a_new_ticket_that_refers_to_it(
        mocked: responses.RequestsMock) -> None:
    """An agent solved the ticket: the customer's next message is a new problem (conversation continuity)."""
    item = second_item()
    mocked.put(TICKET_URL, status=409, json={"error": "UpdateConflict", "description": "Ticket was updated"})
    solved = fixture("ticket_create")
    solved["ticket"].update(id=TICKET_ID, status="solved")
    mocked.get(TICKET_URL, json=solved)
    created = fixture("ticket_create")
    created["ticket"]["id"] = 35450
    post = mocked.post(f"{API}/tickets", json=created, status=201)
    links = stamped_links()

    result = zendesk().deliver(item, links)

    assert (result.operation, result.remote_id) == ("followup_ticket_created", "35450")
    sent = json.loads(post.calls[0].request.body)["ticket"]
    assert "via_followup_source_id" not in sent, "Zendesk records follow-ups of closed tickets only"
    assert f"followup-of-{TICKET_ID}" in sent["tags"]
    assert [c.request.method for c in mocked.calls] == ["PUT", "GET", "POST"]
    assert links.get("conversation", CONVERSATION_ID)[0] == "35450"


def test_a_conflict_on_an_open_ticket_rereads_it_and_adds_the_comment(mocked: responses.RequestsMock) -> None:
    item = second_item()
    mocked.put(TICKET_URL, status=409, json={"error": "UpdateConflict", "description": "Ticket was updated"})
    current = fixture("ticket_create")
    current["ticket"].update(id=TICKET_ID, status="pending", updated_at="2026-01-01T11:00:00Z",
                             tags=["channel-gateway", "sms"])
    mocked.get(TICKET_URL, json=current)
    retry = mocked.put(TICKET_URL, json=fixture("ticket_update"))

    result = zendesk().deliver(item, stamped_links())

    assert result.operation == "comment_added"
    sent = json.loads(retry.calls[0].request.body)["ticket"]
    assert "safe_update" not in sent and "tags" not in sent


def test_a_conflict_with_a_tag_to_add_writes_the_list_read_under_its_stamp(mocked: responses.RequestsMock) -> None:
    item = second_item()
    mocked.put(TICKET_URL, status=409, json={"error": "UpdateConflict", "description": "Ticket was updated"})
    current = fixture("ticket_create")
    current["ticket"].update(id=TICKET_ID, status="open", updated_at="2026-01-01T11:00:00Z", tags=["vip"])
    mocked.get(TICKET_URL, json=current)
    retry = mocked.put(TICKET_URL, json=fixture("ticket_update"))

    assert zendesk().deliver(item, stamped_links(tags=("sms",))).operation == "comment_added"

    sent = json.loads(retry.calls[0].request.body)["ticket"]
    assert sent["tags"] == ["vip", "channel-gateway", "sms"]  # read again: an agent's change is kept
    assert (sent["safe_update"], sent["updated_stamp"]) == (True, "2026-01-01T11:00:00Z")


def test_a_ticket_known_to_be_closed_gets_a_follow_up_without_a_failed_update(
        mocked: responses.RequestsMock) -> None:
    item = second_item()
    post = mocked.post(f"{API}/tickets", json=fixture("ticket_create"), status=201)
    result = zendesk().deliver(item, stamped_links(status="closed"))
    assert result.operation == "followup_ticket_created"
    assert json.loads(post.calls[0].request.body)["ticket"]["via_followup_source_id"] == TICKET_ID
    assert [c.request.method for c in mocked.calls] == ["POST"]


def test_answers_lost_on_the_socket_are_recovered_without_rewriting_anything() -> None:
    """Against the fake server: each write takes effect and then the connection closes without an answer (the user
    upsert, the ticket creation, the next comment). Every retry links what the lost write made and writes nothing
    twice; the agent's rename of the user, made while a retry was pending, survives."""
    renamed = "Asha Rao (verified by phone)"
    with FakeZendesk() as fake:
        crm = zendesk(base_url=fake.url)
        links = MemoryLinkStore()
        first = delivery_item(crm="helpdesk")
        second = delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm="helpdesk",
                               outbox_id=2, opened=False)
        fake.lose_next_answer("POST", "/api/v2/users/create_or_update")
        fake.lose_next_answer("POST", "/api/v2/tickets")
        for attempt in (1, 2):
            with pytest.raises(RetryableError) as caught:
                crm.deliver(replace(first, attempt=attempt), links)
            assert caught.value.code == "network"
            if attempt == 1:
                fake.rename_user(CUSTOMER_ID, renamed)
        assert crm.deliver(replace(first, attempt=3), links).operation == "already_written"
        (ticket,) = fake.tickets()
        fake.lose_next_answer("PUT", f"/api/v2/tickets/{ticket['id']}")
        with pytest.raises(RetryableError):
            crm.deliver(second, links)
        assert crm.deliver(replace(second, attempt=2), links).operation == "already_written"

        assert fake.lost == ["POST /api/v2/users/create_or_update", "POST /api/v2/tickets",
                             f"PUT /api/v2/tickets/{ticket['id']}"]
        (user,) = fake.users()
        assert user["name"] == renamed
        assert links.get("customer", CUSTOMER_ID) == (str(user["id"]), {"recovered": True})
        assert links.get("conversation", CONVERSATION_ID)[0] == str(ticket["id"])
        assert fake.comment_counts() == {first.message.id: 1, second.message.id: 1}
        assert fake.write_counts() == {"user": 1, "ticket": 1, "comment": 1}
