"""Satisfaction surveys: a solved Zendesk ticket -> the customer asked once on their channel -> their rating written
back to the ticket and counted.

Zendesk's solved-ticket notification is signed and stored like its reply events (``tests.connectors.
zendesk_two_way.signed``); Zendesk (``PUT /api/v2/tickets/{id}``) and Twilio (the Messages resource, 201) are answered
by ``responses``; Meta's quick replies follow the Send API and Cloud API references.

The ``csat_N`` tag: Update Ticket documents only ``tags``, the whole list, which replaces the ticket's
(``additional_tags``/``remove_tags`` are documented for ``tickets/update_many.json?ids=`` only,
https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/),
so the ticket is read (``GET /api/v2/tickets/{id}``) and its list written back with the csat tag swapped, under
``safe_update`` + ``updated_stamp``
(https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#protecting-against-ticket-update-collisions).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
import responses
from prometheus_client import REGISTRY
from sqlalchemy import select

from gateway.config import load_config
from gateway.model import Message
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime, build_runtime
from gateway.storage.links import DbLinkStore
from gateway.storage.tables import messages, outbox, sends, surveys
from gateway.surveys import RatingWriter, parse_rating
from gateway.webhooks import Headers, HookRequest
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.connectors.test_meta_send import (
    MESSENGER_SEND,
    WHATSAPP_SEND,
    customer_message,
    meta,
    request_for,
    sent_json,
)
from tests.connectors.test_twilio_send import MESSAGES, resource
from tests.connectors.zendesk_two_way import WEBHOOK_SECRET, signed
from tests.helpers import message_sid, twilio_inbox_item, twilio_params
from tests.reply_flow import drain, run_sends

API = "https://acme.zendesk.com/api/v2"
TICKET = 35436
QUESTION = "How did we do? Reply with a number from 1 (poor) to 5 (great)."
CUSTOMER = "+14155550100"

CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms:
  desk: {{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zendesk-token,
         webhook_secret: "{WEBHOOK_SECRET}", reply_poll_seconds: 0}}
routes:
  - {{from: [sms-main], to: desk}}
surveys:
  - channels: [sms-main]
    text: {{default: "{QUESTION}", es: "¿Qué tal lo hicimos? Responda con un número del 1 al 5."}}
    window_hours: 48
    field: "360012345"
"""


@pytest.fixture
def rt(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    runtime = build_runtime(load_config(write_config(CONFIG)), http=requests.Session())
    yield runtime
    runtime.close()


def customer_writes(rt: Runtime, n: int, text: str, at: datetime | None = None) -> str:
    params = twilio_params(message_sid(n), CUSTOMER, text, TWILIO_SID)
    rt.queues.store_inbox("sms-main", [twilio_inbox_item(params)], {}, f"{PUBLIC_URL}/hooks/sms-main",
                          received_at=at)
    drain(PipelineWorker(rt, "test-pipeline"))
    with rt.engine.connect() as conn:
        return str(conn.execute(select(messages.c.id).where(
            messages.c.provider_message_id == params["MessageSid"])).scalar_one())


def ticket_solved(rt: Runtime, invocation: str) -> None:
    """Zendesk's solved-ticket trigger notifies the webhook: verified, split and stored as the web process does."""
    body = json.dumps({"event": "ticket_solved", "ticket_id": str(TICKET)}).encode()
    request = HookRequest("POST", "/crm-hooks/desk", "", Headers(signed(body, invocation=invocation)), body,
                          f"{PUBLIC_URL}/crm-hooks/desk")
    crm = rt.crms["desk"]
    crm.verify_reply_hook(request)  # type: ignore[attr-defined]
    items = crm.split_reply_hook(request)  # type: ignore[attr-defined]
    assert [item.kind for item in items] == ["zendesk_status"]
    rt.queues.store_inbox("crm:desk", items, dict(request.headers.items()), request.public_url)
    drain(PipelineWorker(rt, "test-pipeline"))


def survey_rows(rt: Runtime) -> list[tuple[str, int | None, str | None]]:
    with rt.engine.connect() as conn:
        return [(r.status, r.rating, r.comment) for r in conn.execute(select(surveys).order_by(surveys.c.id))]


def delivered_to_crm(rt: Runtime, message_id: str) -> bool:
    with rt.engine.connect() as conn:
        return conn.execute(select(outbox.c.id).where(outbox.c.message_id == message_id)).first() is not None


def ratings_counted(rating: str) -> float:
    return REGISTRY.get_sample_value("gateway_survey_ratings_total", {"channel": "sms-main", "rating": rating}) or 0.0


@pytest.mark.parametrize(("text", "expected"), [
    ("5", (5, "")), ("4/5 great service", (4, "great service")), ("4\ufe0f\u20e3", (4, "")),
    ("\u2b50\u2b50\u2b50", (3, "")), ("five!", (5, "")), ("3 - slow but fine", (3, "slow but fine")),
    ("2\nthe courier was late", (2, "the courier was late")), ("5 stars, thanks", (5, "thanks")),
])
def test_ratings_are_read_in_the_forms_customers_write_them(text: str, expected: tuple[int, str]) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize("text", ["2 more questions", "0", "6", "12", "4.5", "hello", "", "one more thing"])
def test_other_messages_are_not_ratings(text: str) -> None:
    assert parse_rating(text) is None


def test_a_solved_ticket_asks_once_and_the_rating_is_written_back_and_counted(rt: Runtime) -> None:
    first = customer_writes(rt, 1, "My parcel never came")
    with rt.engine.connect() as conn:
        conversation = conn.execute(select(messages.c.conversation_id).where(messages.c.id == first)).scalar_one()
    DbLinkStore(rt.engine, "desk").put("conversation", conversation, str(TICKET))
    ticket_solved(rt, "01HQ7ZK5W6R8Y3ND2C1B0A9F8E")
    ticket_solved(rt, "01HQ7ZK5W6R8Y3ND2C1B0A9F8F")  # solved again after a reopen: not asked twice
    assert survey_rows(rt) == [("asked", None, None)]

    with responses.RequestsMock() as mock:
        mock.post(MESSAGES, status=201, json=resource("SM" + "2" * 32, QUESTION, to=CUSTOMER, sender="+15005550006"))
        assert run_sends(rt) == 1
        sent = parse_qs(str(mock.calls[0].request.body))
    assert sent["Body"] == [QUESTION] and sent["To"] == [CUSTOMER]
    with rt.engine.connect() as conn:
        assert [row.status for row in conn.execute(select(sends))] == ["sent"]

    before = ratings_counted("4")
    answer = customer_writes(rt, 2, "4 - quick, but the courier was rude")
    assert not delivered_to_crm(rt, answer)  # the answer is no new support message
    assert survey_rows(rt) == [("answered", 4, "quick, but the courier was rude")]
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/tickets/{TICKET}", json={"ticket": {
            "id": TICKET, "status": "solved", "tags": ["channel-gateway", "csat_2", "sms"],
            "updated_at": "2025-11-24T10:02:11Z"}})
        mock.put(f"{API}/tickets/{TICKET}", json={"ticket": {"id": TICKET, "status": "solved"}})
        writer = RatingWriter(rt, "test-ratings")
        assert writer.run_due() == 1
        assert writer.run_due() == 0
        read, call = mock.calls
    assert read.request.method == "GET"
    update = json.loads(call.request.body)["ticket"]
    assert update["custom_fields"] == [{"id": 360012345, "value": 4}]
    assert update["tags"] == ["channel-gateway", "sms", "csat_4"]  # an earlier rating's tag taken out
    assert update["safe_update"] is True and update["updated_stamp"] == "2025-11-24T10:02:11Z"
    assert not {"additional_tags", "remove_tags"} & update.keys()
    assert update["comment"] == {"body": "The customer rated this ticket 4/5 (satisfaction survey). Their comment: "
                                         "quick, but the courier was rude", "public": False}
    assert ratings_counted("4") == before + 1
    assert survey_rows(rt) == [("written", 4, "quick, but the courier was rude")]

    later = customer_writes(rt, 3, "5")  # the survey is answered: a new message is support again
    assert delivered_to_crm(rt, later)


def test_a_message_that_is_no_rating_goes_to_the_crm_and_the_survey_waits_on(rt: Runtime) -> None:
    first = customer_writes(rt, 1, "My parcel never came")
    with rt.engine.connect() as conn:
        conversation = conn.execute(select(messages.c.conversation_id).where(messages.c.id == first)).scalar_one()
    DbLinkStore(rt.engine, "desk").put("conversation", conversation, str(TICKET))
    ticket_solved(rt, "01HQ7ZK5W6R8Y3ND2C1B0A9F8E")
    not_a_rating = customer_writes(rt, 2, "2 more questions about the refund")
    assert delivered_to_crm(rt, not_a_rating) and survey_rows(rt) == [("asked", None, None)]
    rating = customer_writes(rt, 3, "5")
    assert not delivered_to_crm(rt, rating)
    assert survey_rows(rt)[0][:2] == ("answered", 5)


def test_after_the_window_a_rating_is_an_ordinary_message(rt: Runtime) -> None:
    first = customer_writes(rt, 1, "My parcel never came")
    with rt.engine.connect() as conn:
        conversation = conn.execute(select(messages.c.conversation_id).where(messages.c.id == first)).scalar_one()
    DbLinkStore(rt.engine, "desk").put("conversation", conversation, str(TICKET))
    ticket_solved(rt, "01HQ7ZK5W6R8Y3ND2C1B0A9F8E")
    with rt.engine.begin() as conn:  # the question went out 49 hours ago (window_hours: 48)
        conn.execute(surveys.update().values(asked_at=datetime.now(UTC) - timedelta(hours=49)))
    late = customer_writes(rt, 2, "5")
    assert delivered_to_crm(rt, late) and survey_rows(rt) == [("asked", None, None)]


def test_a_solved_event_for_a_ticket_the_gateway_did_not_make_asks_nobody(rt: Runtime) -> None:
    customer_writes(rt, 1, "My parcel never came")
    ticket_solved(rt, "01HQ7ZK5W6R8Y3ND2C1B0A9F8E")  # ticket 35436 is linked to no conversation
    assert survey_rows(rt) == []


# -- quick replies on the channels that have them ------------------------------------------------------------------
def survey_question(answering: Message) -> dict[str, object]:
    return {"text": QUESTION, "full_text": QUESTION, "extras": {"automated": "survey",
                                                                "quick_replies": ["1", "2", "3", "4", "5"]}}


def test_messenger_offers_the_ratings_as_quick_replies() -> None:
    answering = customer_message("messenger_text")
    with responses.RequestsMock() as rsps:
        rsps.post(MESSENGER_SEND, json={"recipient_id": "x", "message_id": "m_1"})
        meta().send(request_for(answering, **survey_question(answering)))
        body = sent_json(rsps)
    assert body["message"]["quick_replies"] == [
        {"content_type": "text", "title": str(n), "payload": f"CHOICE_{n}"} for n in range(1, 6)]
    assert body["message"]["text"] == QUESTION


def test_whatsapp_offers_the_ratings_as_an_interactive_list() -> None:
    answering = customer_message("whatsapp_text")
    with responses.RequestsMock() as rsps:
        rsps.post(WHATSAPP_SEND, json={"messaging_product": "whatsapp", "contacts": [],
                                       "messages": [{"id": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJBQkNE"}]})
        meta().send(request_for(answering, **survey_question(answering)))
        body = sent_json(rsps)
    assert body["type"] == "interactive"
    interactive = body["interactive"]
    assert interactive["type"] == "list" and interactive["body"] == {"text": QUESTION}
    assert [row["title"] for row in interactive["action"]["sections"][0]["rows"]] == ["1", "2", "3", "4", "5"]
