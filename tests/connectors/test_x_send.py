"""Agent replies on X: the outbound conformance suite plus X's credentials, rate-limit reset, refusals and echoes.

Answers are shaped as X's v2 reference documents them: ``POST /2/dm_conversations/with/{participant_id}/messages``
answers 201 ``{"data": {"dm_conversation_id", "dm_event_id"}}``; ``GET .../dm_events`` answers ``{"data": [{id,
event_type, text, sender_id, created_at}], "meta": {"result_count", "next_token"}}`` newest first; errors are
problems ``{"title", "type", "detail", "status"}`` (https://docs.x.com/x-api/fundamentals/response-codes-and-errors),
and a 429 carries ``x-rate-limit-reset`` (Unix seconds). The ``detail`` wording of a refused DM is not given in X's
reference: the tests use the v1.1 wording of error 349.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from oauthlib.oauth1.rfc5849.utils import parse_authorization_header
from responses import matchers
from sqlalchemy import select

from connectors._x_outbound import LOOKUP_PAGES
from connectors.x import XChannel, signed_request
from gateway.config import load_config
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError
from gateway.model import Attachment, Message
from gateway.plugins import ConnectorContext, SendRequest
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.tables import conversations, inbox, messages, sends
from gateway.web import create_app
from tests.conformance.channel import FIXTURES, drain_pipeline, send, split_records
from tests.conformance.sender import REPLY_TEXT, DeadlineSession, SenderConformance
from tests.conformance.sender import send_request as conformance_request
from tests.conftest import PUBLIC_URL

CHANNEL = "x-support"
SECRET = "test-x-consumer-secret"
ME, CUSTOMER = "3001969357", "944480690"
KEYS = {"consumer_key": "test-x-consumer-key", "access_token": "3001969357-test-x-access-token",
        "access_token_secret": "test-x-access-token-secret"}
CONVERSATION_URL = f"https://api.x.com/2/dm_conversations/with/{CUSTOMER}"
POST_URL = CONVERSATION_URL + "/messages"
EVENTS_URL = CONVERSATION_URL + "/dm_events"


def settings(**extra: Any) -> dict[str, Any]:
    return {"type": "x", "consumer_secret": SECRET, "user_id": ME, **KEYS, **extra}


def x_channel(http: requests.Session | None = None, limiter: Any = None, **extra: Any) -> XChannel:
    context = ConnectorContext(http=http or DeadlineSession(), public_url=PUBLIC_URL)
    if limiter is not None:
        context.limiter = limiter
    return XChannel(CHANNEL, XChannel.Config.model_validate(settings(**extra)), context)


def raw(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "x" / f"{name}.json").read_text(encoding="utf-8"))


def inbound(data: dict[str, Any] | None = None) -> Message:
    connector = x_channel()
    body = json.dumps(data or raw("dm_text")).encode()
    [record] = split_records(connector, signed_request(SECRET, body, PUBLIC_URL))
    [message] = connector.normalize(record)
    return message


def send_request(answering: Message | None = None, *, started: datetime | None = None, **changes: Any) -> SendRequest:
    return conformance_request(answering or inbound(), started=started, **changes)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def dm_event(event_id: str, sender: str, text: str, created: datetime) -> dict[str, Any]:
    return {"id": event_id, "event_type": "MessageCreate", "text": text, "sender_id": sender,
            "dm_conversation_id": f"{CUSTOMER}-{ME}", "created_at": stamp(created)}


def events(*items: dict[str, Any], next_token: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"result_count": len(items)}
    if next_token:
        meta["next_token"] = next_token
    return {"data": list(items), "meta": meta}


def problem(status: int, title: str, detail: str, kind: str = "about:blank") -> dict[str, Any]:
    return {"title": title, "detail": detail, "type": kind, "status": status}


class TestXSender(SenderConformance):
    """The shared outbound suite for ``x``: a DM from our account, 429 with x-rate-limit-reset, an interrupted
    attempt found among the conversation's DM events by its text."""

    secrets = (SECRET, KEYS["access_token"], KEYS["access_token_secret"])

    def connector(self, http: requests.Session) -> XChannel:
        return x_channel(http)

    def customer_message(self) -> Message:
        return inbound()

    def mock_accepted(self, rsps: responses.RequestsMock) -> str:
        rsps.post(POST_URL, status=201, json={"data": {"dm_conversation_id": f"{CUSTOMER}-{ME}",
                                                       "dm_event_id": "1730000000000000001"}})
        return "1730000000000000001"

    def mock_refused(self, rsps: responses.RequestsMock) -> None:
        rsps.post(POST_URL, status=403, json=problem(403, "Forbidden", "You cannot send messages to this user."))

    def mock_throttled(self, rsps: responses.RequestsMock) -> None:
        rsps.post(POST_URL, status=429, json=problem(429, "Too Many Requests", "Too Many Requests"),
                  headers={"x-rate-limit-limit": "200", "x-rate-limit-remaining": "0",
                           "x-rate-limit-reset": str(int(datetime.now(UTC).timestamp()) + 60)})

    def mock_earlier_attempt_found(self, rsps: responses.RequestsMock, request: SendRequest) -> str:
        assert request.attempt_started_at is not None
        after = request.attempt_started_at + timedelta(seconds=2)
        rsps.get(EVENTS_URL, json=events(dm_event("1730000000000000009", CUSTOMER, "hello?", after),
                                         dm_event("1730000000000000007", ME, REPLY_TEXT, after)))
        return "1730000000000000007"

    def mock_earlier_attempt_absent(self, rsps: responses.RequestsMock, request: SendRequest) -> None:
        assert request.attempt_started_at is not None
        started = request.attempt_started_at
        rsps.get(EVENTS_URL, json=events(
            dm_event("1730000000000000009", ME, "Anything else I can do?", started + timedelta(seconds=3)),
            dm_event("1730000000000000008", CUSTOMER, REPLY_TEXT, started + timedelta(seconds=2)),
            dm_event("1720000000000000001", ME, REPLY_TEXT, started - timedelta(minutes=20)),
            next_token="18LAA581J5II7LA00000"))


# -- sending ------------------------------------------------------------------------------------------------------

def test_the_dm_is_posted_as_our_account_with_the_text_only() -> None:
    """The body is the documented ``{"text"}``; the call is OAuth 1.0a-signed with our app's key and our account's
    token (never the secrets themselves)."""
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=201, match=[matchers.json_params_matcher({"text": REPLY_TEXT})],
                  json={"data": {"dm_conversation_id": f"{CUSTOMER}-{ME}", "dm_event_id": "1730000000000000001"}})
        result = x_channel().send(send_request())
        header = rsps.calls[0].request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    params = dict(parse_authorization_header(header))
    assert (params["oauth_consumer_key"], params["oauth_token"]) == (KEYS["consumer_key"], KEYS["access_token"])
    assert params["oauth_signature_method"] == "HMAC-SHA1" and params["oauth_signature"]
    assert SECRET not in header and KEYS["access_token_secret"] not in header
    assert result.provider_message_id == "1730000000000000001"


def test_without_our_accounts_keys_nothing_is_sent_and_the_missing_settings_are_named() -> None:
    connector = x_channel(consumer_key=None, access_token=None, access_token_secret=None)
    with responses.RequestsMock(), pytest.raises(PermanentError) as caught:
        connector.send(send_request())
    assert caught.value.code == "not_configured"
    assert "consumer_key, access_token, access_token_secret" in str(caught.value)


def test_attachments_go_as_links_and_an_overlong_reply_is_refused_before_any_call() -> None:
    photo = Attachment(filename="label.png", content_type="image/png", location="https://files.example.com/l.png")
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=201, match=[matchers.json_params_matcher(
            {"text": f"{REPLY_TEXT}\nlabel.png: https://files.example.com/l.png"})],
                  json={"data": {"dm_conversation_id": f"{CUSTOMER}-{ME}", "dm_event_id": "1730000000000000002"}})
        x_channel().send(send_request(attachments=(photo,)))
    with responses.RequestsMock(), pytest.raises(PermanentError, match="10,000") as caught:
        x_channel().send(send_request(text="x" * 10_001))
    assert caught.value.code == "too_long"


def test_a_customer_who_wrote_to_another_account_is_not_answered_from_ours() -> None:
    data = raw("dm_text")
    data["for_user_id"] = data["direct_message_events"][0]["message_create"]["target"]["recipient_id"] = "1111"
    with responses.RequestsMock(), pytest.raises(PermanentError, match="sends as 3001969357"):
        x_channel().send(send_request(inbound(data)))


def test_the_send_budget_is_per_account_under_xs_limits() -> None:
    """200 per 15 minutes per user and 15,000 per day per app: ten a minute stays under both."""
    assert x_channel().send_limit(send_request()) == (f"send:{CHANNEL}:{ME}", 10.0)


# -- errors -------------------------------------------------------------------------------------------------------

def test_throttling_waits_for_xs_reset_time_and_pauses_every_process() -> None:
    """The wait comes from x-rate-limit-reset (Unix seconds) read against the connector's clock."""
    blocked: list[tuple[str, float]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def acquire(self, cost: int = 1) -> None:
            pass

        def block(self, seconds: float) -> None:
            blocked.append((self.name, seconds))

    connector = x_channel(limiter=lambda name, _rate: Recorder(name))
    connector.clock = lambda: 1_764_417_600.0  # type: ignore[method-assign]
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=429, json=problem(429, "Too Many Requests", "Too Many Requests"),
                  headers={"x-rate-limit-limit": "200", "x-rate-limit-remaining": "0",
                           "x-rate-limit-reset": "1764418500"})
        with pytest.raises(RetryableError) as caught:
            connector.send(send_request())
    assert caught.value.retry_after == 900.0
    assert blocked == [(f"send:{CHANNEL}:{ME}", 900.0)]


@pytest.mark.parametrize(("status", "body", "code", "words"), [
    (403, problem(403, "Forbidden", "You cannot send messages to this user."), "dm_refused",
     "does not accept direct messages"),
    (403, {"errors": [{"code": 349, "message": "You cannot send messages to this user."}]}, "dm_refused",
     "reach them another way"),
    (403, problem(403, "Client Forbidden", "This request must be made using an approved developer account that is "
                  "enrolled in the requested endpoint.", "https://api.x.com/2/problems/client-forbidden"),
     "forbidden", "Read, write and Direct Messages"),
    (401, problem(401, "Unauthorized", "Unauthorized"), "unauthorized", "access_token_secret"),
    (400, problem(400, "Invalid Request", "One or more parameters to your request was invalid.",
                  "https://api.x.com/2/problems/invalid-request"), "http_400", "parameters"),
    (404, problem(404, "Not Found Error", "Could not find user with participant_id: [944480690].",
                  "https://api.x.com/2/problems/resource-not-found"), "http_404", "Could not find user"),
])
def test_refusals_are_permanent_in_words_an_agent_understands(status: int, body: dict[str, Any], code: str,
                                                              words: str) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=status, json=body)
        with pytest.raises(PermanentError) as caught:
            x_channel().send(send_request())
    assert caught.value.code == code and words in str(caught.value)
    for secret in (SECRET, KEYS["access_token"], KEYS["access_token_secret"]):
        assert secret not in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_x_outages_are_retryable(status: int) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=status, json=problem(status, "Service Unavailable", "Service Unavailable"))
        with pytest.raises(RetryableError):
            x_channel().send(send_request())


# -- reconcile ----------------------------------------------------------------------------------------------------

def test_reconcile_pages_back_and_matches_our_text_even_with_links_rewritten() -> None:
    """X rewrites links to t.co and escapes &: our message is recognised anyway, on the second page."""
    started = datetime.now(UTC) - timedelta(minutes=3)
    link = Attachment(filename="label.png", content_type="image/png", location="https://files.example.com/l.png")
    request = send_request(started=started, text="Parts & labour: see", attachments=(link,))
    fields = {"dm_event.fields": "id,text,created_at,sender_id", "event_types": "MessageCreate",
              "max_results": "100"}
    with responses.RequestsMock() as rsps:
        rsps.get(EVENTS_URL, match=[matchers.query_param_matcher(fields)], json=events(
            dm_event("1730000000000000020", CUSTOMER, "thanks", started + timedelta(minutes=2)),
            next_token="18LAA581J5II7LA00000"))
        page_two = {**fields, "pagination_token": "18LAA581J5II7LA00000"}
        echoed = "Parts &amp; labour: see\nlabel.png: https://t.co/x1Yz"
        rsps.get(EVENTS_URL, match=[matchers.query_param_matcher(page_two)],
                 json=events(dm_event("1730000000000000011", ME, echoed, started + timedelta(seconds=1))))
        found = x_channel().reconcile(request)
    assert found is not None and found.provider_message_id == "1730000000000000011"


def test_reconcile_stops_at_the_attempt_and_is_bounded() -> None:
    """Events older than a minute before the attempt end the search (newest come first); a conversation that keeps
    paging is given up as unknown rather than read forever."""
    started = datetime.now(UTC) - timedelta(seconds=30)
    request = send_request(started=started)
    with responses.RequestsMock() as rsps:
        rsps.get(EVENTS_URL, json=events(dm_event("1720000000000000001", ME, REPLY_TEXT, started - timedelta(hours=1)),
                                         next_token="18LAA581J5II7LA00000"))
        assert x_channel().reconcile(request) is None
        assert len(rsps.calls) == 1
    with responses.RequestsMock() as rsps:
        rsps.get(EVENTS_URL, json=events(dm_event("1730000000000000030", CUSTOMER, "?", datetime.now(UTC)),
                                         next_token="18LAA581J5II7LA00000"))
        with pytest.raises(OutcomeUnknown):
            x_channel().reconcile(request)
        assert len(rsps.calls) == LOOKUP_PAGES


def test_reconcile_without_read_access_is_unknown_and_throttling_waits() -> None:
    request = send_request(started=datetime.now(UTC) - timedelta(seconds=30))
    with responses.RequestsMock() as rsps:
        rsps.get(EVENTS_URL, status=403, json=problem(403, "Forbidden", "This application is not allowed to access "
                                                                       "or delete your direct messages."))
        with pytest.raises(OutcomeUnknown, match="cannot be asked"):
            x_channel().reconcile(request)
    with responses.RequestsMock() as rsps:
        rsps.get(EVENTS_URL, status=429, headers={"retry-after": "60"})
        with pytest.raises(RetryableError):
            x_channel().reconcile(request)
    assert x_channel().reconcile(send_request()) is None  # no attempt: nothing to ask


# -- our own DMs never come back -----------------------------------------------------------------------------------

def own_echo(event_id: str) -> dict[str, Any]:
    """The Account Activity delivery of a DM our account sent through the API: sender is us, with the app id."""
    data = raw("dm_own")
    event = data["direct_message_events"][0]
    event["id"] = event_id
    event["message_create"]["source_app_id"] = "268278"
    event["message_create"]["message_data"]["text"] = REPLY_TEXT
    return data


def test_the_echo_of_our_own_dm_is_not_a_customer_message() -> None:
    connector = x_channel()
    [record] = split_records(connector, signed_request(SECRET, json.dumps(own_echo("1730000000000000001")).encode(),
                                                       PUBLIC_URL))
    assert connector.normalize(record) == []


@pytest.fixture
def two_way(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  {CHANNEL}: {json.dumps(settings())}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: test-reply-secret-0123456789}}
routes:
  - {{from: [{CHANNEL}], to: trial}}
""")), http=requests.Session())
    yield rt
    rt.close()


def test_an_agent_reply_goes_out_as_a_dm_once_and_its_echo_is_ignored(two_way: Runtime) -> None:
    """Customer DMs us -> agent replies in the CRM -> the send worker posts the DM -> the event id is recorded ->
    the Account Activity echo of that DM is stored but gives no customer message."""
    client = create_app(two_way).test_client()
    assert send(client, signed_request(SECRET, json.dumps(raw("dm_text")).encode(), PUBLIC_URL),
                CHANNEL).status_code == 200
    drain_pipeline(two_way)
    with two_way.engine.connect() as conn:
        conversation = conn.execute(select(conversations.c.id)).scalar_one()
    hook = two_way.crms["trial"].sample_reply_hook(  # type: ignore[attr-defined]
        conversation_id=conversation, text="Refund sent", public_url=f"{PUBLIC_URL}/crm-hooks/trial")
    assert client.open("/crm-hooks/trial", method="POST", headers=list(hook.headers.items()),
                       data=hook.body).status_code == 200
    drain_pipeline(two_way)
    worker = SendWorker(two_way, "test-send")
    [row] = worker.claim()
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=201, match=[matchers.json_params_matcher({"text": "Refund sent"})],
                  json={"data": {"dm_conversation_id": f"{CUSTOMER}-{ME}", "dm_event_id": "1730000000000000001"}})
        worker.process(row)
    with two_way.engine.connect() as conn:
        assert tuple(conn.execute(select(sends.c.status, sends.c.provider_message_id)).one()) == (
            "sent", "1730000000000000001")
    assert send(client, signed_request(SECRET, json.dumps(own_echo("1730000000000000001")).encode(), PUBLIC_URL),
                CHANNEL).status_code == 200
    drain_pipeline(two_way)
    with two_way.engine.connect() as conn:
        echo = conn.execute(select(inbox.c.status).where(inbox.c.provider_id == "1730000000000000001")).scalar_one()
        inbound_count = len(conn.execute(select(messages.c.id).where(messages.c.direction == "inbound")).all())
    assert echo == "ignored" and inbound_count == 1
