"""Meta replies: the outbound conformance suite (Messenger, Instagram, WhatsApp Cloud API) plus Meta's own rules.

Answers follow Meta's documented shapes: the Send API's ``{recipient_id, message_id}``, the Cloud API's
``{messaging_product, contacts, messages: [{id}]}``, the conversations API's ``{data: [{messages: {data: [...]}}]}``
and Graph errors ``{error: {message, type, code, error_subcode, error_data, fbtrace_id}}``
(https://developers.facebook.com/docs/graph-api/guides/error-handling).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from connectors.meta import MetaChannel
from gateway.config import load_config
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError
from gateway.model import Attachment, Message
from gateway.plugins import ConnectorContext, SendRequest
from gateway.runtime import build_runtime
from gateway.storage.tables import messages, provider_statuses
from gateway.web import create_app
from tests.conformance.channel import drain_pipeline, send, split_records
from tests.conformance.sender import REPLY_TEXT, DeadlineSession, SenderConformance, send_request
from tests.conftest import PUBLIC_URL
from tests.connectors.test_meta import (
    ACCESS_TOKEN,
    APP_SECRET,
    GRAPH,
    PAGE,
    PSID,
    VERIFY_TOKEN,
    WAMID_TEXT,
    payload,
    post,
)
from tests.reply_flow import note_texts, only_conversation, post_agent_reply, reply_config, run_sends, send_rows

CHANNEL = "meta-main"
PAGE_TOKEN = "test-meta-page-token"
IG_ACCOUNT, IGSID = "17841400008460056", "1238811229876543"
PHONE_NUMBER_ID, WA_ID = "106540352242922", "16505551234"
SETTINGS = {"type": "meta", "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN, "access_token": ACCESS_TOKEN,
            "page_tokens": {PAGE: PAGE_TOKEN, IG_ACCOUNT: PAGE_TOKEN}}


def meta(http: requests.Session | None = None, **extra: Any) -> MetaChannel:
    config = MetaChannel.Config.model_validate({**SETTINGS, **extra})
    return MetaChannel(CHANNEL, config, ConnectorContext(http=http or DeadlineSession(), public_url=PUBLIC_URL))


def customer_message(fixture: str, **changes: Any) -> Message:
    connector = meta()
    [record] = split_records(connector, post(payload(fixture)))
    [message] = connector.normalize(record)
    return message.model_copy(update=changes)


request_for = partial(send_request, age=timedelta(minutes=5), customer_name="Pat Doe")


def graph_error(code: int, message: str, subcode: int | None = None, details: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code,
                             "fbtrace_id": "AbCdEfGhIjK"}
    if subcode:
        error["error_subcode"] = subcode
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


def graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def thread(*items: tuple[str, str, str, datetime]) -> dict[str, Any]:
    """A conversations API answer: one thread with messages (id, text, sender id, created), newest first."""
    return {"data": [{"messages": {"data": [
        {"id": mid, "message": text, "from": {"name": "Someone", "id": sender}, "created_time": graph_time(created)}
        for mid, text, sender, created in items],
        "paging": {"cursors": {"before": "QVFIU", "after": "QVFIU2"}}}, "id": "t_10161445012345678"}]}


def sent_json(rsps: responses.RequestsMock, index: int = 0) -> dict[str, Any]:
    return json.loads(rsps.calls[index].request.body)


CONVERSATIONS = f"{GRAPH}/me/conversations"
MESSENGER_SEND = f"{GRAPH}/me/messages"
WHATSAPP_SEND = f"{GRAPH}/{PHONE_NUMBER_ID}/messages"


class TestMetaMessengerSender(SenderConformance):
    """The shared outbound suite for a Messenger reply (``reconcile_settle_seconds`` 20: the suite's attempt started
    30 s ago; the settle time is tested on its own below)."""

    secrets = (ACCESS_TOKEN, PAGE_TOKEN, APP_SECRET, VERIFY_TOKEN)
    fixture, owner, recipient, platform = "messenger_text", PAGE, PSID, "messenger"

    def connector(self, http: requests.Session) -> MetaChannel:
        return meta(http, reconcile_settle_seconds=20)

    def customer_message(self) -> Message:
        return customer_message(self.fixture)

    def mock_accepted(self, rsps: responses.RequestsMock) -> str:
        mid = "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P"
        rsps.post(MESSENGER_SEND, json={"recipient_id": self.recipient, "message_id": mid})
        return mid

    def mock_refused(self, rsps: responses.RequestsMock) -> None:
        rsps.post(MESSENGER_SEND, status=400, json=graph_error(100, "(#100) No matching user found", 2018001))

    def mock_throttled(self, rsps: responses.RequestsMock) -> None:
        rsps.post(MESSENGER_SEND, status=400, json=graph_error(
            613, "(#613) Calls to this api have exceeded the rate limit."))

    def mock_earlier_attempt_found(self, rsps: responses.RequestsMock, request: SendRequest) -> str:
        assert request.attempt_started_at is not None
        mid = "m_FoundOurEarlierAttempt0001"
        rsps.get(CONVERSATIONS, json=thread(
            (mid, REPLY_TEXT, self.owner, request.attempt_started_at + timedelta(seconds=1)),
            ("m_customer1", "Where is my order #A-1043?", self.recipient,
             request.attempt_started_at - timedelta(minutes=6))),
            match=[responses.matchers.query_param_matcher({
                "platform": self.platform, "user_id": self.recipient,
                "fields": "messages.limit(20){id,message,from,created_time}"})])
        return mid

    def mock_earlier_attempt_absent(self, rsps: responses.RequestsMock, request: SendRequest) -> None:
        assert request.attempt_started_at is not None
        rsps.get(CONVERSATIONS, json=thread(
            ("m_customer2", REPLY_TEXT, self.recipient, request.attempt_started_at + timedelta(seconds=5)),
            ("m_older", REPLY_TEXT, self.owner, request.attempt_started_at - timedelta(hours=2))))


class TestMetaInstagramSender(TestMetaMessengerSender):
    """The same suite for an Instagram reply: the account id the webhooks name picks the page token."""

    fixture, owner, recipient, platform = "instagram_text", IG_ACCOUNT, IGSID, "instagram"


class TestMetaWhatsAppSender(SenderConformance):
    """The shared outbound suite for a WhatsApp Cloud API reply.

    The Cloud API offers no lookup of a sent message, and the contract's answer for that is ``OutcomeUnknown``:
    the suite's two lookup cases are replaced by that (without a network call), so an interrupted WhatsApp reply
    is never resent.
    """

    secrets = (ACCESS_TOKEN, PAGE_TOKEN, APP_SECRET, VERIFY_TOKEN)

    def connector(self, http: requests.Session) -> MetaChannel:
        return meta(http)

    def customer_message(self) -> Message:
        return customer_message("whatsapp_text")

    def mock_accepted(self, rsps: responses.RequestsMock) -> str:
        wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJBQkNERUYwMTIzNDU2Nzg5AA=="
        rsps.post(WHATSAPP_SEND, json={"messaging_product": "whatsapp",
                                       "contacts": [{"input": WA_ID, "wa_id": WA_ID}], "messages": [{"id": wamid}]})
        return wamid

    def mock_refused(self, rsps: responses.RequestsMock) -> None:
        rsps.post(WHATSAPP_SEND, status=400, json=graph_error(
            131026, "(#131026) Message Undeliverable.", details="Message Undeliverable."))

    def mock_throttled(self, rsps: responses.RequestsMock) -> None:
        rsps.post(WHATSAPP_SEND, status=400, json=graph_error(
            130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached."))

    def mock_earlier_attempt_found(self, rsps: responses.RequestsMock, request: SendRequest) -> str:
        raise AssertionError("the Cloud API has no lookup")

    def mock_earlier_attempt_absent(self, rsps: responses.RequestsMock, request: SendRequest) -> None:
        raise AssertionError("the Cloud API has no lookup")

    def test_an_interrupted_attempt_that_went_out_is_found(self) -> None:
        request = self.request(attempt=2, started=datetime.now(UTC) - timedelta(seconds=30))
        with responses.RequestsMock() as rsps:
            with pytest.raises(OutcomeUnknown) as caught:
                self.connector(DeadlineSession()).reconcile(request)
            assert not rsps.calls
        assert "WhatsApp" in str(caught.value)

    test_an_interrupted_attempt_that_did_not_go_out_is_absent = test_an_interrupted_attempt_that_went_out_is_found


# -- Messenger and Instagram -----------------------------------------------------------------------------------------
def test_a_messenger_reply_uses_the_page_token_and_carries_the_token_as_metadata() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSENGER_SEND, json={"recipient_id": PSID, "message_id": "m_1"})
        meta().send(request_for(customer_message("messenger_text")))
        body = sent_json(rsps)
        assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {PAGE_TOKEN}"
    assert body == {"recipient": {"id": PSID}, "messaging_type": "RESPONSE",
                    "message": {"text": REPLY_TEXT, "metadata": "gw-send-7"}}


def test_without_a_page_token_the_access_token_is_used() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSENGER_SEND, json={"recipient_id": PSID, "message_id": "m_1"})
        meta(page_tokens={}).send(request_for(customer_message("messenger_text")))
        assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.parametrize(("age", "tag", "expected"), [
    (timedelta(hours=23), False, {"messaging_type": "RESPONSE"}),
    (timedelta(hours=30), True, {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}),
    (timedelta(days=6, hours=23), True, {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}),
])
def test_messenger_window_and_the_human_agent_tag(age: timedelta, tag: bool, expected: dict[str, str]) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSENGER_SEND, json={"recipient_id": PSID, "message_id": "m_1"})
        meta(human_agent_tag=tag).send(request_for(customer_message("messenger_text"), age=age))
        body = sent_json(rsps)
    assert {key: body[key] for key in ("messaging_type", "tag") if key in body} == expected


@pytest.mark.parametrize(("age", "tag", "words"), [
    (timedelta(hours=30), False, "human_agent_tag"), (timedelta(days=8), True, "7 days"),
])
def test_a_closed_messenger_window_is_refused_before_any_call(age: timedelta, tag: bool, words: str) -> None:
    with responses.RequestsMock() as rsps, pytest.raises(PermanentError) as caught:
        meta(human_agent_tag=tag).send(request_for(customer_message("messenger_text"), age=age))
    assert not rsps.calls
    assert caught.value.code == "window_closed" and words in str(caught.value)


def test_a_lone_attachment_goes_as_itself_and_with_text_as_links() -> None:
    photo = Attachment(filename="label.jpg", content_type="image/jpeg", location="https://files.example.com/l.jpg")
    pdf = Attachment(filename="invoice.pdf", content_type="application/pdf", location="https://files.example.com/i")
    with responses.RequestsMock() as rsps:
        rsps.post(MESSENGER_SEND, json={"recipient_id": PSID, "message_id": "m_1"})
        rsps.post(MESSENGER_SEND, json={"recipient_id": PSID, "message_id": "m_2"})
        meta().send(request_for(customer_message("messenger_text"), text="", full_text="", attachments=(photo,)))
        meta().send(request_for(customer_message("messenger_text"), attachments=(photo, pdf)))
        lone, both = sent_json(rsps, 0), sent_json(rsps, 1)
    assert lone["message"]["attachment"] == {"type": "image", "payload": {
        "url": "https://files.example.com/l.jpg", "is_reusable": False}}
    assert both["message"]["text"] == (f"{REPLY_TEXT}\n\nlabel.jpg: https://files.example.com/l.jpg\n"
                                       "invoice.pdf: https://files.example.com/i")


@pytest.mark.parametrize(("fixture", "label"), [("messenger_text", "Messenger"), ("instagram_text", "Instagram"),
                                               ("whatsapp_text", "WhatsApp")])
def test_an_attachment_without_a_public_url_is_refused_before_any_call(fixture: str, label: str) -> None:
    """As on Slack and X: a file kept only in the gateway's store cannot be carried, so the agent is told before
    anything reaches the customer, rather than the customer getting the text without it."""
    photo = Attachment(filename="label.jpg", content_type="image/jpeg", location="https://files.example.com/l.jpg")
    stored = Attachment(filename="local.pdf", content_type="application/pdf", location="store:sha256/abcd")
    with responses.RequestsMock(), pytest.raises(PermanentError, match=rf"local\.pdf.*{label}") as caught:
        meta().send(request_for(customer_message(fixture), attachments=(photo, stored)))
    assert caught.value.code == "attachment_not_linkable"


def test_an_instagram_reply_over_1000_characters_is_refused() -> None:
    with pytest.raises(PermanentError) as caught:
        meta().send(request_for(customer_message("instagram_text"), text="x" * 1001))
    assert caught.value.code == "too_long" and "Instagram" in str(caught.value)


def test_the_send_budget_is_per_page_or_number() -> None:
    connector = meta(send_per_minute=120)
    assert connector.send_limit(request_for(customer_message("messenger_text"))) == (f"send:{CHANNEL}:{PAGE}", 120)
    assert connector.send_limit(request_for(customer_message("whatsapp_text"))) == (
        f"send:{CHANNEL}:{PHONE_NUMBER_ID}", 120)


# -- WhatsApp --------------------------------------------------------------------------------------------------------
def test_a_whatsapp_reply_answers_the_customers_message_and_carries_our_token() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(WHATSAPP_SEND, json={"messaging_product": "whatsapp", "contacts": [{"input": WA_ID, "wa_id": WA_ID}],
                                       "messages": [{"id": "wamid.X1"}]})
        result = meta().send(request_for(customer_message("whatsapp_text")))
        body = sent_json(rsps)
        assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert body == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID,
                    "biz_opaque_callback_data": "gw-send-7", "context": {"message_id": WAMID_TEXT},
                    "type": "text", "text": {"body": REPLY_TEXT, "preview_url": False}}
    assert result.provider_message_id == "wamid.X1"


def test_one_whatsapp_attachment_carries_the_text_as_its_caption() -> None:
    pdf = Attachment(filename="invoice.pdf", content_type="application/pdf", location="https://files.example.com/i")
    with responses.RequestsMock() as rsps:
        rsps.post(WHATSAPP_SEND, json={"messaging_product": "whatsapp", "messages": [{"id": "wamid.X2"}]})
        meta().send(request_for(customer_message("whatsapp_text"), attachments=(pdf,)))
        body = sent_json(rsps)
    assert body["type"] == "document"
    assert body["document"] == {"link": "https://files.example.com/i", "caption": REPLY_TEXT,
                                "filename": "invoice.pdf"}


TEMPLATES = {"default": {"name": "agent_reply", "language": "en_US"},
             "es": {"name": "respuesta_agente", "language": "es", "parameters": ["{customer}", "{text}"]}}


@pytest.mark.parametrize(("language", "name", "code", "parameters"), [
    ("es", "respuesta_agente", "es", ["Pat Doe", REPLY_TEXT]), ("de", "agent_reply", "en_US", [REPLY_TEXT]),
])
def test_whatsapp_after_24_hours_sends_the_configured_template(language: str, name: str, code: str,
                                                               parameters: list[str]) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(WHATSAPP_SEND, json={"messaging_product": "whatsapp", "messages": [
            {"id": "wamid.X3", "message_status": "accepted"}]})
        meta(whatsapp_templates=TEMPLATES).send(
            request_for(customer_message("whatsapp_text", language=language), age=timedelta(hours=26)))
        body = sent_json(rsps)
    assert body["type"] == "template" and "context" not in body and body["biz_opaque_callback_data"] == "gw-send-7"
    assert body["template"] == {"name": name, "language": {"code": code}, "components": [
        {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}]}


def test_whatsapp_after_24_hours_without_a_template_is_refused_in_words() -> None:
    with pytest.raises(PermanentError) as caught:
        meta().send(request_for(customer_message("whatsapp_text"), age=timedelta(hours=26)))
    assert caught.value.code == "window_closed"
    assert "26 h ago" in str(caught.value) and "whatsapp_templates" in str(caught.value)


# -- Graph errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fixture", "url", "error", "expected"), [
    ("whatsapp_text", WHATSAPP_SEND, graph_error(131047, "(#131047) Re-engagement message", details=(
        "Message failed to send because more than 24 hours have passed since the customer last replied to this "
        "number.")), "window_closed"),
    ("messenger_text", MESSENGER_SEND, graph_error(10, "(#10) This message is sent outside of allowed window.",
                                                   2018278), "window_closed"),
    ("messenger_text", MESSENGER_SEND, graph_error(551, "(#551) This person isn't available right now.", 1545041),
     "unavailable"),
    ("whatsapp_text", WHATSAPP_SEND, graph_error(131026, "(#131026) Message Undeliverable."), "undeliverable"),
    ("messenger_text", MESSENGER_SEND, graph_error(190, "Error validating access token: Session has expired.",
                                                   463), "190"),
])
def test_graph_refusals_are_permanent_with_a_reason(fixture: str, url: str, error: dict[str, Any],
                                                    expected: str) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(url, status=400, json=error)
        with pytest.raises(PermanentError) as caught:
            meta().send(request_for(customer_message(fixture)))
    assert caught.value.code == expected and len(str(caught.value)) > 40


@pytest.mark.parametrize(("status", "error"), [
    (400, graph_error(4, "(#4) Application request limit reached")),
    (400, graph_error(131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit")),
    (500, graph_error(2, "An unexpected error has occurred. Please retry your request later.")),
    (503, None),
])
def test_rate_limits_and_outages_retry(status: int, error: dict[str, Any] | None) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(WHATSAPP_SEND, status=status, headers={"Retry-After": "11"},
                  **({"json": error} if error else {"body": "Service Unavailable"}))
        with pytest.raises(RetryableError) as caught:
            meta().send(request_for(customer_message("whatsapp_text")))
    assert caught.value.retry_after == 11.0


def test_a_token_echoed_in_an_error_is_masked() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSENGER_SEND, status=400, json=graph_error(
            100, f"(#100) Invalid parameter: the token {PAGE_TOKEN} cannot send to this recipient"))
        with pytest.raises(PermanentError) as caught:
            meta().send(request_for(customer_message("messenger_text")))
    assert PAGE_TOKEN not in str(caught.value) and "***" in str(caught.value)


# -- reconciling Messenger -------------------------------------------------------------------------------------------
def frozen(connector: MetaChannel, now: datetime) -> MetaChannel:
    connector._now = lambda: now  # type: ignore[method-assign]
    return connector


def test_absent_only_after_the_settle_time_and_unknown_when_the_thread_moved_on() -> None:
    started = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    request = request_for(customer_message("messenger_text"), started=started)
    for elapsed, absent in ((10, False), (61, True)):
        with responses.RequestsMock() as rsps:
            rsps.get(CONVERSATIONS, json=thread())
            connector = frozen(meta(), started + timedelta(seconds=elapsed))
            if absent:
                assert connector.reconcile(request) is None
            else:
                with pytest.raises(RetryableError) as caught:
                    connector.reconcile(request)
                assert caught.value.retry_after == pytest.approx(60 - elapsed)
    busy = [(f"m_{n}", f"message {n}", PSID, started + timedelta(seconds=n)) for n in range(20)]
    with responses.RequestsMock() as rsps:
        rsps.get(CONVERSATIONS, json=thread(*busy))
        with pytest.raises(OutcomeUnknown):
            frozen(meta(), started + timedelta(minutes=5)).reconcile(request)


# -- through the whole gateway ---------------------------------------------------------------------------------------
def gateway_for(write_config: Callable[..., Path]) -> Any:
    return build_runtime(load_config(write_config(reply_config(CHANNEL, SETTINGS))), http=requests.Session())


def test_a_whatsapp_failure_status_reaches_the_agent_with_metas_code(write_config: Callable[..., Path]) -> None:
    runtime = gateway_for(write_config)
    try:
        client = create_app(runtime).test_client()
        assert send(client, post(payload("whatsapp_text")), CHANNEL).status_code == 200
        drain_pipeline(runtime)
        post_agent_reply(client, only_conversation(runtime), REPLY_TEXT)
        drain_pipeline(runtime)
        wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJPVVJSRVBMWTAwMQA="
        with responses.RequestsMock() as rsps:
            rsps.post(WHATSAPP_SEND, json={"messaging_product": "whatsapp", "messages": [{"id": wamid}]})
            assert run_sends(runtime) == 1
            token = sent_json(rsps)["biz_opaque_callback_data"]
        [row] = send_rows(runtime)
        assert (row.status, row.provider_message_id, token) == ("sent", wamid, f"gw-send-{row.id}")
        status = payload("whatsapp_status_delivered")
        status["entry"][0]["changes"][0]["value"]["statuses"] = [{
            "id": wamid, "status": "failed", "timestamp": "1700000950", "recipient_id": WA_ID,
            "biz_opaque_callback_data": token,
            "errors": [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                        "error_data": {"details": "Message Undeliverable."}}]}]
        assert send(client, post(status), CHANNEL).status_code == 200
        drain_pipeline(runtime)
        with runtime.engine.connect() as conn:
            [kept] = conn.execute(provider_statuses.select()).all()
            inbound = conn.execute(messages.select().where(messages.c.direction == "inbound")).all()
        assert (kept.status, kept.error_code, kept.extras["biz_opaque_callback_data"]) == ("failed", "131026", token)
        assert len(inbound) == 1
        [note] = note_texts(runtime)
        assert "131026" in note and "Message undeliverable" in note
    finally:
        runtime.close()


def test_the_echo_of_a_messenger_reply_never_comes_back_as_the_customers(write_config: Callable[..., Path]) -> None:
    runtime = gateway_for(write_config)
    try:
        client = create_app(runtime).test_client()
        assert send(client, post(payload("messenger_text")), CHANNEL).status_code == 200
        drain_pipeline(runtime)
        post_agent_reply(client, only_conversation(runtime), REPLY_TEXT)
        drain_pipeline(runtime)
        with responses.RequestsMock() as rsps:
            rsps.post(MESSENGER_SEND, json={"recipient_id": PSID, "message_id": "m_OurReply0001"})
            assert run_sends(runtime) == 1
            metadata = sent_json(rsps)["message"]["metadata"]
        echo = payload("messenger_echo")
        echo["entry"][0]["messaging"][0]["message"].update(mid="m_OurReply0001", text=REPLY_TEXT, metadata=metadata)
        assert send(client, post(echo), CHANNEL).status_code == 200
        drain_pipeline(runtime)
        with runtime.engine.connect() as conn:
            stored = conn.execute(messages.select().order_by(messages.c.created_at)).all()
        assert [(m.direction, m.provider_message_id.startswith("m_")) for m in stored] == [
            ("inbound", True), ("outbound", False)], "the echo added no message"
    finally:
        runtime.close()


def test_the_echo_of_an_instagram_reply_gives_no_message() -> None:
    """Instagram echoes our reply with the account as sender (and ``is_echo``): nothing a customer wrote."""
    echo = payload("instagram_text")
    event = echo["entry"][0]["messaging"][0]
    event.update(sender={"id": IG_ACCOUNT}, recipient={"id": IGSID})
    event["message"].update(mid="aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwMDA4NDYwMDU2Ok91clJlcGx5",
                            text=REPLY_TEXT, is_echo=True)
    connector = meta()
    [record] = split_records(connector, post(echo))
    assert connector.normalize(record) == []
