"""Twilio replies: the outbound conformance suite (SMS and WhatsApp) plus Twilio's own rules.

Answers are Twilio's documented shapes (https://www.twilio.com/docs/messaging/api/message-resource): a Message
resource on create, a page (``messages``, ``next_page_uri``...) on list, and ``{code, message, more_info, status}``
on errors (https://www.twilio.com/docs/api/errors).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses

from connectors.twilio import TwilioChannel
from gateway.config import load_config
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError
from gateway.model import Attachment, Message
from gateway.plugins import ConnectorContext, SendRequest
from gateway.runtime import build_runtime
from gateway.storage.tables import messages, provider_statuses
from gateway.web import create_app
from tests.conformance.channel import drain_pipeline, send, split_records
from tests.conformance.sender import REPLY_TEXT, DeadlineSession, SenderConformance, send_request
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.connectors.test_twilio import form_request, load_fixture, replace
from tests.reply_flow import (
    note_texts,
    only_conversation,
    post_agent_reply,
    reply_config,
    run_notes,
    run_sends,
    send_rows,
)

CHANNEL = "sms-main"
API = "https://api.twilio.com"
MESSAGES = f"{API}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
CUSTOMER, BUSINESS = "+14017122661", "+15558675310"
WA_BUSINESS = "whatsapp:+14155238886"
SERVICE = "MG9752274e9e519418a7406176694466fa"
HX_DEFAULT, HX_ES = "HX" + "a" * 32, "HX" + "b" * 32


def twilio(http: requests.Session | None = None, **settings: Any) -> TwilioChannel:
    config = TwilioChannel.Config.model_validate(
        {"type": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, **settings})
    return TwilioChannel(CHANNEL, config, ConnectorContext(http=http or DeadlineSession(), public_url=PUBLIC_URL))


def customer_message(fixture: str = "sms", **changes: Any) -> Message:
    """A customer's message as the connector normalises it (the one a reply answers)."""
    connector = twilio()
    [record] = split_records(connector, form_request(replace(load_fixture(fixture))))
    [message] = connector.normalize(record)
    return message.model_copy(update=changes)


request_for = partial(send_request, age=timedelta(minutes=5), customer_name="Pat Doe")


def resource(sid: str, body: str, *, to: str = CUSTOMER, sender: str | None = BUSINESS, created: datetime | None = None,
             status: str = "queued", direction: str = "outbound-api", service: str | None = None,
             num_media: int = 0) -> dict[str, Any]:
    """A Message resource as Twilio returns it."""
    created = created or datetime.now(UTC)
    base = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages"
    return {
        "account_sid": TWILIO_SID, "api_version": "2010-04-01", "body": body,
        "date_created": format_datetime(created), "date_sent": None if status == "queued" else format_datetime(
            created), "date_updated": format_datetime(created), "direction": direction, "error_code": None,
        "error_message": None, "from": sender, "messaging_service_sid": service, "num_media": str(num_media),
        "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid, "status": status,
        "subresource_uris": {"media": f"{base}/{sid}/Media.json"}, "to": to, "uri": f"{base}/{sid}.json",
    }


def page(found: list[dict[str, Any]], next_token: str | None = None) -> dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json?To=%2B14017122661&PageSize=50"
    return {"messages": found, "page": 0, "page_size": 50, "start": 0, "end": max(len(found) - 1, 0),
            "uri": f"{uri}&Page=0", "first_page_uri": f"{uri}&Page=0",
            "next_page_uri": f"{uri}&Page=1&PageToken={next_token}" if next_token else None,
            "previous_page_uri": None}


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


def posted(rsps: responses.RequestsMock, index: int = 0) -> dict[str, list[str]]:
    body = rsps.calls[index].request.body
    return parse_qs(body if isinstance(body, str) else body.decode())


def list_query(started: datetime, to: str = CUSTOMER, sender: str | None = BUSINESS) -> Any:
    """The first list request: To, From, ``DateSent>=`` the day the attempt started (less the clock slack)."""
    query = {"To": to, "DateSent>": (started - timedelta(minutes=2)).date().isoformat(), "PageSize": "50"}
    if sender:
        query["From"] = sender
    return responses.matchers.query_param_matcher(query)


class TestTwilioSmsSender(SenderConformance):
    """The shared outbound suite for an SMS reply.

    ``reconcile_settle_seconds`` is 20 here: the suite's interrupted attempt started 30 s ago, and with the default
    (120 s) an absent attempt is "cannot tell yet" rather than absent (tested on its own below).
    """

    secrets = (TWILIO_TOKEN,)
    fixture = "sms"
    to, sender = CUSTOMER, BUSINESS

    def connector(self, http: requests.Session) -> TwilioChannel:
        return twilio(http, reconcile_settle_seconds=20)

    def customer_message(self) -> Message:
        return customer_message(self.fixture)

    def mock_accepted(self, rsps: responses.RequestsMock) -> str:
        sid = "SM" + "1" * 32
        rsps.post(MESSAGES, status=201, json=resource(sid, REPLY_TEXT, to=self.to, sender=self.sender))
        return sid

    def mock_refused(self, rsps: responses.RequestsMock) -> None:
        rsps.post(MESSAGES, status=400, json=twilio_error(
            400, 21211, f"The 'To' number {self.to} is not a valid phone number."))

    def mock_throttled(self, rsps: responses.RequestsMock) -> None:
        rsps.post(MESSAGES, status=429, headers={"Retry-After": "3"},
                  json=twilio_error(429, 20429, "Too Many Requests"))

    def mock_earlier_attempt_found(self, rsps: responses.RequestsMock, request: SendRequest) -> str:
        assert request.attempt_started_at is not None
        sid = "SM" + "2" * 32
        rsps.get(MESSAGES, match=[list_query(request.attempt_started_at, self.to, self.sender)], json=page([
            resource(sid, REPLY_TEXT, to=self.to, sender=self.sender, status="delivered",
                     created=request.attempt_started_at + timedelta(seconds=1))]))
        return sid

    def mock_earlier_attempt_absent(self, rsps: responses.RequestsMock, request: SendRequest) -> None:
        assert request.attempt_started_at is not None
        rsps.get(MESSAGES, match=[list_query(request.attempt_started_at, self.to, self.sender)], json=page([
            resource("SM" + "3" * 32, "Something else entirely", to=self.to, sender=self.sender, status="sent",
                     created=request.attempt_started_at + timedelta(seconds=2)),
            # the same words, sent long before this attempt: an earlier reply, not this one
            resource("SM" + "4" * 32, REPLY_TEXT, to=self.to, sender=self.sender, status="delivered",
                     created=request.attempt_started_at - timedelta(hours=3))]))


class TestTwilioWhatsAppSender(TestTwilioSmsSender):
    """The same suite for a WhatsApp reply through Twilio: to and from ``whatsapp:`` addresses."""

    fixture = "whatsapp"
    to, sender = "whatsapp:+14017122661", WA_BUSINESS


# -- what is posted --------------------------------------------------------------------------------------------------
def test_an_sms_reply_goes_from_the_number_texted_with_a_status_callback() -> None:
    message = customer_message()
    assert message.extras["To"] == BUSINESS  # normalize keeps the number the customer texted
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=201, json=resource("SM" + "5" * 32, REPLY_TEXT))
        result = twilio().send(request_for(message))
        form = posted(rsps)
        assert rsps.calls[0].request.headers["Authorization"].startswith("Basic ")
    assert form == {"To": [CUSTOMER], "From": [BUSINESS], "Body": [REPLY_TEXT],
                    "StatusCallback": [f"{PUBLIC_URL}/hooks/{CHANNEL}"]}
    assert (result.provider_message_id, result.status) == ("SM" + "5" * 32, "queued")


def test_public_attachments_go_as_media_urls_and_one_without_a_url_is_refused_before_any_call() -> None:
    """As on Slack and X: a file kept only in the gateway's store cannot be carried, so the agent is told before
    anything reaches the customer, rather than the customer getting the text without it."""
    photos = tuple(Attachment(filename=f"p{n}.jpg", content_type="image/jpeg",
                              location=f"https://files.example.com/p{n}.jpg") for n in range(2))
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=201, json=resource("MM" + "5" * 32, REPLY_TEXT, num_media=2))
        twilio().send(request_for(customer_message(), attachments=photos))
        form = posted(rsps)
    assert form["MediaUrl"] == ["https://files.example.com/p0.jpg", "https://files.example.com/p1.jpg"]
    stored = Attachment(filename="local.pdf", content_type="application/pdf", location="store:sha256/abcd")
    for fixture, label in (("sms", "SMS"), ("whatsapp", "WhatsApp")):
        with responses.RequestsMock(), pytest.raises(PermanentError, match=rf"local\.pdf.*{label}") as caught:
            twilio().send(request_for(customer_message(fixture), attachments=(*photos, stored)))
        assert caught.value.code == "attachment_not_linkable"


def test_eleven_media_or_an_overlong_body_are_refused_before_any_call() -> None:
    many = tuple(Attachment(filename=f"p{n}.jpg", content_type="image/jpeg",
                            location=f"https://files.example.com/p{n}.jpg") for n in range(11))
    with responses.RequestsMock() as rsps:  # no call registered: any call would fail the test
        with pytest.raises(PermanentError) as too_many:
            twilio().send(request_for(customer_message(), attachments=many))
        with pytest.raises(PermanentError) as too_long:
            twilio().send(request_for(customer_message(), text="x" * 1601))
        assert not rsps.calls
    assert too_many.value.code == "too_many_attachments" and "10" in str(too_many.value)
    assert too_long.value.code == "too_long" and "1,600" in str(too_long.value)


def test_a_messaging_service_sends_instead_of_the_number() -> None:
    connector = twilio(messaging_service_sid=SERVICE)
    request = request_for(customer_message())
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=201, json=resource("SM" + "6" * 32, REPLY_TEXT, sender=None, service=SERVICE,
                                                      status="accepted"))
        result = connector.send(request)
        form = posted(rsps)
    assert form["MessagingServiceSid"] == [SERVICE] and "From" not in form
    assert result.status == "accepted"
    assert connector.send_limit(request) == (f"send:{CHANNEL}:{SERVICE}", 60.0)


def test_the_send_budget_is_per_sending_number() -> None:
    connector = twilio(send_per_minute=30)
    assert connector.send_limit(request_for(customer_message())) == (f"send:{CHANNEL}:{BUSINESS}", 30.0)
    assert connector.send_limit(request_for(customer_message("whatsapp"))) == (f"send:{CHANNEL}:{WA_BUSINESS}", 30.0)


def test_a_message_without_the_number_texted_is_refused_with_the_reason() -> None:
    message = customer_message()
    message = message.model_copy(update={"extras": {k: v for k, v in message.extras.items() if k != "To"}})
    with pytest.raises(PermanentError) as caught:
        twilio().send(request_for(message))
    assert caught.value.code == "no_sender" and "messaging_service_sid" in str(caught.value)
    assert twilio().send_limit(request_for(message)) == (f"send:{CHANNEL}:unknown", 60.0)


def test_sms_has_no_24_hour_window() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=201, json=resource("SM" + "7" * 32, REPLY_TEXT))
        twilio().send(request_for(customer_message(), age=timedelta(days=9)))
        assert posted(rsps)["Body"] == [REPLY_TEXT]


# -- WhatsApp and its window -----------------------------------------------------------------------------------------
TEMPLATES = {"default": {"content_sid": HX_DEFAULT},
             "es": {"content_sid": HX_ES, "variables": {"1": "{customer}", "2": "{text}", "3": "{agent}"}}}


def test_whatsapp_inside_the_window_is_free_text_between_whatsapp_addresses() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=201, json=resource("SM" + "8" * 32, REPLY_TEXT, to="whatsapp:" + CUSTOMER,
                                                      sender=WA_BUSINESS))
        twilio(whatsapp_templates=TEMPLATES).send(request_for(customer_message("whatsapp"),
                                                              age=timedelta(hours=23, minutes=59)))
        form = posted(rsps)
    assert form["To"] == ["whatsapp:" + CUSTOMER] and form["From"] == [WA_BUSINESS]
    assert form["Body"] == [REPLY_TEXT] and "ContentSid" not in form


@pytest.mark.parametrize(("language", "sid", "variables"), [
    ("es", HX_ES, {"1": "Pat Doe", "2": REPLY_TEXT, "3": "Ann Agent"}),
    ("es-MX", HX_ES, {"1": "Pat Doe", "2": REPLY_TEXT, "3": "Ann Agent"}),
    ("fr", HX_DEFAULT, {"1": REPLY_TEXT}),
    (None, HX_DEFAULT, {"1": REPLY_TEXT}),
])
def test_whatsapp_after_24_hours_sends_the_template_of_the_customers_language(
        language: str | None, sid: str, variables: dict[str, str]) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=201, json=resource("SM" + "9" * 32, REPLY_TEXT, to="whatsapp:" + CUSTOMER,
                                                      sender=WA_BUSINESS))
        twilio(whatsapp_templates=TEMPLATES).send(
            request_for(customer_message("whatsapp", language=language), age=timedelta(hours=26)))
        form = posted(rsps)
    assert form["ContentSid"] == [sid] and "Body" not in form
    assert json.loads(form["ContentVariables"][0]) == variables


def test_whatsapp_after_24_hours_without_a_template_is_refused_in_words() -> None:
    with pytest.raises(PermanentError) as caught:
        twilio().send(request_for(customer_message("whatsapp"), age=timedelta(hours=26)))
    assert caught.value.code == "window_closed"
    assert "26 h ago" in str(caught.value) and "template" in str(caught.value)


def test_template_settings_are_checked() -> None:
    for bad in ({"default": {"content_sid": "MG" + "a" * 32}},
                {"default": {"content_sid": HX_DEFAULT, "variables": {"1": "{ticket}"}}}):
        with pytest.raises(ValueError, match=r"content_sid|ticket"):
            twilio(whatsapp_templates=bad)


# -- Twilio's refusals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "code", "said", "expected_code", "words"), [
    (400, 21610, "Attempt to send to unsubscribed recipient", "opted_out", "START"),
    (400, 63016, "Failed to send freeform message because you are outside the allowed window. If you are using "
                 "WhatsApp, please use a Message Template.", "window_closed", "template"),
    (400, 21211, "The 'To' number +14017122661 is not a valid phone number.", "21211", "not a valid phone number"),
    (401, 20003, "Authentication Error - invalid username", "20003", "auth_token"),
])
def test_refusals_are_permanent_with_a_reason(status: int, code: int, said: str, expected_code: str,
                                              words: str) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=status, json=twilio_error(status, code, said))
        with pytest.raises(PermanentError) as caught:
            twilio().send(request_for(customer_message()))
    assert caught.value.code == expected_code and words in str(caught.value)
    assert TWILIO_TOKEN not in str(caught.value)


def test_throttling_and_outages_retry_after_what_twilio_asks() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, status=429, headers={"Retry-After": "7"},
                  json=twilio_error(429, 20429, "Too Many Requests"))
        rsps.post(MESSAGES, status=503, body="<html>Service Unavailable</html>")
        with pytest.raises(RetryableError) as throttled:
            twilio().send(request_for(customer_message()))
        with pytest.raises(RetryableError) as outage:
            twilio().send(request_for(customer_message()))
    assert throttled.value.retry_after == 7.0 and throttled.value.code == "20429"
    assert outage.value.code == "503"


def test_a_timeout_is_left_to_the_core_to_reconcile() -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(MESSAGES, body=requests.ReadTimeout("read timed out"))
        with pytest.raises(requests.Timeout):
            twilio().send(request_for(customer_message()))


# -- reconciling an interrupted attempt ------------------------------------------------------------------------------
def frozen(connector: TwilioChannel, now: datetime) -> TwilioChannel:
    connector._now = lambda: now  # type: ignore[method-assign]
    return connector


def test_absent_is_only_answered_after_the_settle_time() -> None:
    started = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    request = request_for(customer_message(), started=started)
    for elapsed, absent in ((30, False), (119, False), (121, True)):
        connector = frozen(twilio(), started + timedelta(seconds=elapsed))
        with responses.RequestsMock() as rsps:
            rsps.get(MESSAGES, match=[list_query(started)], json=page([]))
            if absent:
                assert connector.reconcile(request) is None
            else:
                with pytest.raises(RetryableError) as caught:
                    connector.reconcile(request)
                assert caught.value.retry_after == pytest.approx(120 - elapsed)
                assert caught.value.code == "reconcile_pending"


def test_the_lookup_follows_next_pages_but_no_more_than_three() -> None:
    started = datetime.now(UTC) - timedelta(minutes=5)
    request = request_for(customer_message(), started=started)
    other = [resource(f"SM{n:032d}", f"reply {n}", created=started + timedelta(seconds=n)) for n in range(3)]
    with responses.RequestsMock() as rsps:
        rsps.get(MESSAGES, match=[list_query(started)], json=page(other[:1], next_token="PASM1"))
        rsps.get(MESSAGES, match=[responses.matchers.query_param_matcher({"PageToken": "PASM1"}, strict_match=False)],
                 json=page([resource("SM" + "e" * 32, REPLY_TEXT, created=started + timedelta(seconds=3))]))
        found = twilio().reconcile(request)
    assert found is not None and found.provider_message_id == "SM" + "e" * 32

    with responses.RequestsMock() as rsps:
        for n in range(3):
            token_match = [list_query(started)] if n == 0 else [responses.matchers.query_param_matcher(
                {"PageToken": f"PASM{n}"}, strict_match=False)]
            rsps.get(MESSAGES, match=token_match, json=page(other[n:n + 1], next_token=f"PASM{n + 1}"))
        with pytest.raises(OutcomeUnknown):
            twilio().reconcile(request)
        assert len(rsps.calls) == 3


def test_a_template_attempt_is_recognised_by_its_filled_variables() -> None:
    started = datetime.now(UTC) - timedelta(minutes=5)
    request = request_for(customer_message("whatsapp", language="es"), started=started, age=timedelta(hours=30))
    rendered = f"Hola Pat Doe, Ann Agent te responde: {REPLY_TEXT}"
    with responses.RequestsMock() as rsps:
        rsps.get(MESSAGES, match=[list_query(started, "whatsapp:" + CUSTOMER, WA_BUSINESS)], json=page([
            resource("SM" + "f" * 32, rendered, to="whatsapp:" + CUSTOMER, sender=WA_BUSINESS,
                     created=started + timedelta(seconds=1), status="read")]))
        found = twilio(whatsapp_templates=TEMPLATES).reconcile(request)
    assert found is not None and found.status == "read"


def test_through_a_service_the_lookup_matches_the_service_not_a_number() -> None:
    started = datetime.now(UTC) - timedelta(minutes=5)
    request = request_for(customer_message(), started=started)
    with responses.RequestsMock() as rsps:
        rsps.get(MESSAGES, match=[list_query(started, sender=None)], json=page([
            resource("SM" + "a" * 32, REPLY_TEXT, sender="+15005550006", service="MG" + "0" * 32,
                     created=started + timedelta(seconds=1)),
            resource("SM" + "b" * 32, REPLY_TEXT, sender="+15005550006", service=SERVICE,
                     created=started + timedelta(seconds=2))]))
        found = twilio(messaging_service_sid=SERVICE).reconcile(request)
    assert found is not None and found.provider_message_id == "SM" + "b" * 32


# -- statuses and echoes, through the whole gateway ------------------------------------------------------------------
def test_a_reply_goes_out_once_and_its_failure_reaches_the_agent(write_config: Callable[..., Path]) -> None:
    settings = {"type": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}
    runtime = build_runtime(load_config(write_config(reply_config(CHANNEL, settings))), http=requests.Session())
    try:
        client = create_app(runtime).test_client()
        assert send(client, form_request(load_fixture("sms")), CHANNEL).status_code == 200
        drain_pipeline(runtime)
        post_agent_reply(client, only_conversation(runtime), REPLY_TEXT)
        drain_pipeline(runtime)
        sid = "SM" + "c" * 32
        with responses.RequestsMock() as rsps:
            rsps.post(MESSAGES, status=201, json=resource(sid, REPLY_TEXT))
            assert run_sends(runtime) == 1
            assert posted(rsps)["From"] == [BUSINESS]
        [row] = send_rows(runtime)
        assert (row.status, row.provider_message_id) == ("sent", sid)

        for status, extra in (("sent", {}), ("undelivered", {"ErrorCode": "30007"})):
            callback = replace(load_fixture("status_delivered"), MessageSid=sid, SmsSid=sid, MessageStatus=status,
                               SmsStatus=status, From=BUSINESS, To=CUSTOMER, **extra)
            assert send(client, form_request(callback), CHANNEL).status_code == 200
        drain_pipeline(runtime)
        with runtime.engine.connect() as conn:
            kept = {r.status: r.error_code for r in conn.execute(provider_statuses.select())}
            inbound = conn.execute(messages.select().where(messages.c.direction == "inbound")).all()
        assert kept == {"sent": None, "undelivered": "30007"}
        assert len(inbound) == 1, "a status of our own reply never becomes a customer message"
        [note] = note_texts(runtime)
        assert "undelivered" in note and "30007" in note
        assert run_notes(runtime) == 1
    finally:
        runtime.close()
