"""The Ticketbox example CRM: the shared HTTP CRM suite against a fake Ticketbox, links, and the shipped mapping.

The fake answers as Ticketbox documents: ``POST /tickets`` -> 201 ``{"id", "requester_id"}``, ``POST
/tickets/{id}/comments`` -> 201 ``{"id"}``, a repeated ``Idempotency-Key`` answered with the first answer and nothing
created, refusals as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import responses
from ticketbox import TicketboxCrm

from gateway.config import load_config
from gateway.errors import PermanentError
from gateway.mapping import mapping_path_for, run_mapping_tests
from gateway.plugins import ConnectorContext, CrmConnector, Registry
from tests.conformance.crm import (
    CONVERSATION_ID,
    CUSTOMER_ID,
    ContactRecordCases,
    HttpCrmConformance,
    MemoryLinkStore,
    conversation,
    delivery_item,
)

BASE = "https://acme.ticketbox.example/api/v1"
TOKEN = "test-ticketbox-api-token"
COMMENTS = re.compile(rf"{re.escape(BASE)}/tickets/(\d+)/comments")
MAPPING = Path(TicketboxCrm.default_mapping or "")


class FakeTicketbox:
    """Tickets and comments as Ticketbox keeps them, each created once per Idempotency-Key."""

    def __init__(self) -> None:
        self.requesters: dict[str, dict[str, Any]] = {}  # external id -> the requester, made by its first ticket
        self.tickets: dict[str, dict[str, Any]] = {}  # id -> the ticket as posted
        self.comments: dict[str, tuple[str, dict[str, Any]]] = {}  # id -> (ticket id, the comment as posted)
        self.answers: dict[str, tuple[int, dict[str, str], str]] = {}  # Idempotency-Key -> the first answer

    def register(self, mocked: responses.RequestsMock) -> None:
        mocked.add_callback(responses.POST, f"{BASE}/tickets", callback=self.handle)
        mocked.add_callback(responses.POST, COMMENTS, callback=self.handle)

    def handle(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {}, json.dumps({"error": {"code": "unauthorized", "message": "unknown API token"}})
        key = request.headers["Idempotency-Key"]
        if key not in self.answers:
            body = json.loads(request.body or b"{}")
            comment_id = str(5000 + len(self.comments))
            on_ticket = COMMENTS.fullmatch(str(request.url))
            if on_ticket is None:
                ticket_id = str(100 + len(self.tickets))
                self.tickets[ticket_id] = body
                self.comments[comment_id] = (ticket_id, body["comment"])
                given = body["requester"]
                requester = self.requesters.setdefault(given["external_id"],
                                                       {**given, "id": str(77 + len(self.requesters))})
                answer = {"id": ticket_id, "requester_id": requester["id"]}
            elif on_ticket.group(1) not in self.tickets:
                return 404, {}, json.dumps({"error": {"code": "not_found", "message": "no such ticket"}})
            else:
                self.comments[comment_id] = (on_ticket.group(1), body)
                answer = {"id": comment_id}
            self.answers[key] = (201, {"Content-Type": "application/json"}, json.dumps(answer))
        return self.answers[key]

    def written_messages(self) -> list[str]:
        """The gateway message id of every comment (a ticket's first one included)."""
        return [comment["external_id"] for _, comment in self.comments.values()]


def ticketbox(http: requests.Session | None = None) -> TicketboxCrm:
    config = TicketboxCrm.Config.model_validate({"type": "ticketbox", "base_url": BASE, "api_token": TOKEN})
    return TicketboxCrm("helpdesk", config, ConnectorContext(http=http or requests.Session()))


class TestTicketboxConformance(HttpCrmConformance, ContactRecordCases):
    """``ticketbox`` passes the shared HTTP suite; a write is a ticket or comment the fake created."""

    secrets: ClassVar[tuple[str, ...]] = (TOKEN,)
    fake: FakeTicketbox

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return ticketbox(http)

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        self.fake = FakeTicketbox()
        self.fake.register(mocked)

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        return len(self.fake.comments)

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        return self.fake.written_messages()

    def rename_contact(self, mocked: responses.RequestsMock, customer_id: str, name: str) -> None:
        self.fake.requesters[customer_id]["name"] = name

    def contact_name(self, mocked: responses.RequestsMock, customer_id: str) -> str:
        return str(self.fake.requesters[customer_id]["name"])

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        mocked.post(f"{BASE}/tickets", status=status, body=body, headers=headers)

    def error_body(self, status: int) -> tuple[str, str]:
        problem = {"code": "invalid_requester", "message": "requester needs an email or a phone number"}
        return json.dumps({"error": problem}), "invalid_requester"


@pytest.fixture
def fake() -> Any:
    box = FakeTicketbox()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        box.register(mocked)
        yield box


def test_a_ticket_per_conversation_and_a_comment_per_later_message(fake: FakeTicketbox) -> None:
    """The first message opens the ticket (requester, subject, tags, first comment); the next is a comment on it.
    The customer, the conversation and each message are linked to their Ticketbox records."""
    links = MemoryLinkStore()
    first, second = conversation("helpdesk", ["My order #1234 never arrived", "Any news?"])
    first, second = (replace(item, fields={**item.fields, "body": item.message.text}) for item in (first, second))
    crm = ticketbox()
    assert crm.deliver(first, links).operation == "ticket_created"
    assert crm.deliver(second, links).operation == "comment_added"

    [(ticket_id, ticket)] = fake.tickets.items()
    assert ticket["external_id"] == CONVERSATION_ID and ticket["subject"] == first.fields["subject"]
    assert ticket["requester"] == {"external_id": CUSTOMER_ID, "name": None, "phone": "+14017122661",
                                   "email": None}
    assert [(on, comment["body"]) for on, comment in fake.comments.values()] == [
        (ticket_id, "My order #1234 never arrived"), (ticket_id, "Any news?")]
    assert links.get("customer", CUSTOMER_ID) == ("77", {})
    assert links.get("conversation", CONVERSATION_ID) == (ticket_id, {})
    assert links.get("message", second.message.id) is not None


def test_a_write_repeated_after_a_crash_is_answered_by_its_idempotency_key(fake: FakeTicketbox) -> None:
    """The worker died after Ticketbox created the ticket and before the links were stored: the same key is sent
    again, Ticketbox answers as the first time, and the links are stored."""
    item = delivery_item(crm="helpdesk")
    ticketbox().deliver(item, MemoryLinkStore())  # links lost with the crash
    links = MemoryLinkStore()
    result = ticketbox().deliver(replace(item, attempt=2), links)
    assert len(fake.tickets) == len(fake.comments) == 1
    assert links.get("conversation", CONVERSATION_ID) == (result.remote_id, {})


@pytest.mark.parametrize(("status", "body", "code"), [
    (422, json.dumps({"error": {"code": "invalid_requester", "message": "requester needs a phone"}}),
     "invalid_requester"),
    (403, "<html>Forbidden</html>", "403"),
])
def test_a_refusal_is_permanent_with_ticketboxs_code_and_reason(status: int, body: str, code: str) -> None:
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BASE}/tickets", status=status, body=body)
        with pytest.raises(PermanentError) as caught:
            ticketbox().deliver(delivery_item(crm="helpdesk"), MemoryLinkStore())
    assert caught.value.code == code
    assert ("requester needs a phone" in str(caught.value)) == (status == 422)


def test_the_shipped_mapping_is_the_default_and_passes_its_tests(write_config: Any) -> None:
    path = write_config(f"""
        storage: {{url: "{{storage_url}}"}}
        channels: {{}}
        crms:
          helpdesk: {{type: ticketbox, base_url: "{BASE}", api_token: "{TOKEN}"}}
        routes: []
    """)
    config = load_config(path)
    assert mapping_path_for(config, "helpdesk", Registry.from_entry_points()) == MAPPING
    assert MAPPING.name == "mapping.yaml" and MAPPING.parent.name == "ticketbox"
    assert run_mapping_tests(MAPPING) == []
