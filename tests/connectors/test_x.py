"""The X channel (Account Activity API direct messages): the shared suite plus the CRC and our own messages.

Fixtures in ``tests/fixtures/x`` follow the Account Activity API's documented ``direct_message_events`` deliveries
(``for_user_id``, ``message_create`` with ``sender_id``, ``target.recipient_id``, ``message_data``, and ``users``).
Requests are signed ``x-twitter-webhooks-signature: sha256=base64(HMAC-SHA256(consumer secret, body))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests
import responses
from sqlalchemy import select

from connectors.x import XChannel, signed_request
from gateway.attachments import SCHEME
from gateway.config import load_config
from gateway.errors import MalformedRequest, SignatureInvalid
from gateway.plugins import ChannelConnector, ConnectorContext
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import conversations, customers, inbox, messages
from gateway.web import create_app
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import (
    FIXTURES,
    ChannelConformance,
    Expected,
    config_text,
    count,
    drain_pipeline,
    send,
    split_records,
)
from tests.conftest import PUBLIC_URL

CHANNEL = "x-support"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
SECRET = "test-x-consumer-secret"
ME, CUSTOMER = "3001969357", "944480690"


def settings(**extra: Any) -> dict[str, Any]:
    return {"type": "x", "consumer_secret": SECRET, "user_id": ME, **extra}


def raw(name: str) -> bytes:
    return (FIXTURES / "x" / f"{name}.json").read_bytes()


def post(body: bytes | dict[str, Any], secret: str = SECRET) -> HookRequest:
    return signed_request(secret, body if isinstance(body, bytes) else json.dumps(body).encode(), HOOK_URL)


def x_channel(**extra: Any) -> XChannel:
    config = XChannel.Config.model_validate(settings(**extra))
    return XChannel(CHANNEL, config, ConnectorContext(http=requests.Session(), public_url=PUBLIC_URL))


class TestXConformance(ChannelConformance):
    """The shared suite for ``x``: no timestamp in the signature (event ids deduplicate), CRC as the handshake."""

    connector_class = XChannel
    channel_name = CHANNEL
    required_secrets = ("consumer_secret",)
    has_timestamp = False
    has_handshake = True
    expected = {
        "dm_text": Expected("message", ({
            "channel": "x", "provider_message_id": "1727342516412456964",
            "sender.identifiers": [{"kind": "x", "value": CUSTOMER}], "sender.display_name": "Jo Müller",
            "recipients.0.identifiers": [{"kind": "x", "value": ME}],
            "text": "My parcel & the invoice don't match <order 77>", "sent_at": "2023-11-14T22:13:20.123000Z",
            "thread.provider_thread_id": f"{CUSTOMER}-{ME}", "extras.screen_name": "jo_mueller",
        },), ("1727342516412456964",)),
        "dm_media": Expected("message", ({
            "text": "Here is the damage", "attachments.0.content_type": "image/jpeg",
            "attachments.0.location": "https://ton.twitter.com/1.1/ton/data/dm/1727342516412456966/"
                                      "1727342490000000001/AbC.jpg",
        },)),
        "dm_own": Expected("message"),
    }

    def channel_settings(self) -> dict[str, Any]:
        return settings()

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return post(raw(fixture))

    def tamper(self, request: HookRequest) -> HookRequest:
        body = request.body.replace(b'"text": "', b'"text": "Send the refund to 0000. ', 1)
        assert body != request.body
        return HookRequest(request.method, request.path, request.query_string, request.headers, body,
                           request.public_url)

    def handshake_request(self, connector: ChannelConnector) -> tuple[HookRequest, int, bytes]:
        token = "9b4507b3-9040-4669-9ba1-6a6f2e3a3b35"
        digest = base64.b64encode(hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).digest()).decode()
        expected = json.dumps({"response_token": f"sha256={digest}"}).encode()
        query = f"crc_token={token}"
        return HookRequest("GET", "", query, Headers({}), b"", f"{HOOK_URL}?{query}"), 200, expected

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        text = raw("dm_text")
        data = json.loads(text)
        no_id = json.loads(text)
        del no_id["direct_message_events"][0]["id"]
        no_sender = json.loads(text)
        del no_sender["direct_message_events"][0]["message_create"]["sender_id"]
        return {
            "not_json": post(b"for_user_id=3001969357"),
            "truncated": post(text[: len(text) // 2]),
            "json_array": post(b"[]"),
            "events_not_list": post({**data, "direct_message_events": {"id": "1"}}),
            "event_without_id": post(no_id),
            "message_without_sender": post(no_sender),
        }


@pytest.fixture
def x_runtime(write_config: Any) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(config_text(CHANNEL, settings()))), http=requests.Session())
    yield rt
    rt.close()


def test_conversation_with_our_replies(x_runtime: Runtime) -> None:
    """The customer's two messages and our reply in between: one customer, one conversation, our reply ignored."""
    client = create_app(x_runtime).test_client()
    for name in ("dm_text", "dm_own", "dm_media"):
        assert send(client, post(raw(name)), CHANNEL).status_code == 200
    assert drain_pipeline(x_runtime) == 3
    with x_runtime.engine.connect() as conn:
        assert conn.execute(select(customers.c.display_name)).scalars().all() == ["Jo Müller"]
        assert len(conn.execute(select(conversations.c.id)).all()) == 1
        statuses = sorted(conn.execute(select(inbox.c.status)).scalars())
    assert count(x_runtime, messages, CHANNEL) == 2
    assert statuses == ["done", "done", "ignored"]


def test_several_events_in_one_delivery_are_stored_separately() -> None:
    """A delivery carrying two direct messages becomes two inbox items, keyed by their event ids."""
    data = json.loads(raw("dm_text"))
    second = json.loads(json.dumps(data["direct_message_events"][0]))
    second["id"] = "1727342516412456999"
    data["direct_message_events"].append(second)
    records = split_records(x_channel(), post(data))
    assert [r.provider_id for r in records] == ["1727342516412456964", "1727342516412456999"]


def test_each_event_is_stored_with_only_what_it_needs_of_the_users() -> None:
    """Each event's row carried its sender's whole user object (and ``for_user_id`` as sent): one padded user and
    many events in one signed body were stored once per event. The name and handle are all normalising reads."""
    events = 300
    data = json.loads(raw("dm_text"))
    data["direct_message_events"] = [{**data["direct_message_events"][0], "id": str(1727342516412456964 + n)}
                                     for n in range(events)]
    data["users"][CUSTOMER]["description"] = "d" * 300_000
    request = post(data)
    connector = x_channel()
    records = split_records(connector, request)
    assert len(records) == events
    assert sum(len(record.body) for record in records) < 3 * len(request.body)
    [message] = connector.normalize(records[0])
    assert (message.sender.display_name, message.extras["screen_name"]) == ("Jo Müller", "jo_mueller")
    padded_id = post({**json.loads(raw("dm_text")), "for_user_id": "3" * 100_000})
    with pytest.raises(MalformedRequest):
        connector.split(padded_id)


def test_other_activity_is_acknowledged_and_not_stored(x_runtime: Runtime) -> None:
    """Likes, follows and typing indicators: 200 and nothing stored."""
    client = create_app(x_runtime).test_client()
    assert send(client, post(raw("favorite")), CHANNEL).status_code == 200
    assert count(x_runtime, inbox, CHANNEL) == 0


def test_crc_with_rotated_secret_and_signature_rotation() -> None:
    """The CRC answer uses the current secret; deliveries verify with either the current or the previous one."""
    rotating = x_channel(consumer_secret="test-new", previous_consumer_secret="test-old")
    rotating.verify(post(raw("dm_text"), secret="test-old"))
    rotating.verify(post(raw("dm_text"), secret="test-new"))
    with pytest.raises(SignatureInvalid):
        rotating.verify(post(raw("dm_text"), secret="test-other"))
    answer = rotating.handshake(HookRequest("GET", "", "crc_token=abc", Headers({}), b"", HOOK_URL))
    assert answer is not None
    digest = base64.b64encode(hmac.new(b"test-new", b"abc", hashlib.sha256).digest()).decode()
    assert json.loads(answer.body) == {"response_token": f"sha256={digest}"}


def test_get_without_crc_token_is_refused(x_runtime: Runtime) -> None:
    assert create_app(x_runtime).test_client().get(f"/hooks/{CHANNEL}").status_code == 405


def test_simulated_request_round_trips() -> None:
    connector = x_channel()
    request = connector.sample_request(sender=CUSTOMER, text="hello", recipient=None, public_url=HOOK_URL)
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert message.text == "hello"


MEDIA_URL = "https://ton.twitter.com/1.1/ton/data/dm/1727342516412456966/1727342490000000001/AbC.jpg"
MEDIA_KEYS = {"consumer_key": "test-x-consumer-key", "access_token": "944480000-test-x-access-token",
              "access_token_secret": "test-x-access-token-secret"}


def test_dm_media_fetched_with_oauth1_signature_into_attachment_store() -> None:
    """ton.twitter.com serves DM media only to an OAuth 1.0a request signed as our account: the request carries
    a valid HMAC-SHA1 signature over consumer and token secrets, and the bytes land in the attachment store."""
    from oauthlib.oauth1.rfc5849 import signature as oauth_signature
    from oauthlib.oauth1.rfc5849.utils import parse_authorization_header

    jpeg = b"\xff\xd8\xff\xe0" + b"x-media" * 20
    connector = x_channel(**MEDIA_KEYS)
    [record] = split_records(connector, post(raw("dm_media")))
    [message] = connector.normalize(record)
    with responses.RequestsMock() as mock:
        mock.get(MEDIA_URL, body=jpeg, content_type="image/jpeg")
        [attachment] = connector.enrich(message).attachments
        [call] = mock.calls
    assert attachment.location.startswith(SCHEME) and connector.context.attachments.read(attachment.location) == jpeg
    header = call.request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    params = dict(parse_authorization_header(header))
    assert params["oauth_consumer_key"] == MEDIA_KEYS["consumer_key"]
    assert params["oauth_token"] == MEDIA_KEYS["access_token"]
    checked = oauth_signature.collect_parameters(headers={"Authorization": header}, exclude_oauth_signature=True)
    base = oauth_signature.signature_base_string(
        "GET", oauth_signature.base_string_uri(MEDIA_URL), oauth_signature.normalize_parameters(checked))
    secrets = SimpleNamespace(client_secret=SECRET, resource_owner_secret=MEDIA_KEYS["access_token_secret"])
    assert unquote(params["oauth_signature"]) == oauth_signature.sign_hmac_sha1_with_client(base, secrets)
    assert SECRET not in header and MEDIA_KEYS["access_token_secret"] not in header


def test_dm_media_stays_a_link_without_media_keys_and_other_hosts_are_refused() -> None:
    connector = x_channel()
    [record] = split_records(connector, post(raw("dm_media")))
    [message] = connector.normalize(record)
    assert connector.enrich(message) is message and message.attachments[0].location == MEDIA_URL
    data = json.loads(raw("dm_media"))
    data["direct_message_events"][0]["message_create"]["message_data"]["attachment"]["media"][
        "media_url_https"] = "https://169.254.169.254/latest/meta-data"
    keyed = x_channel(**MEDIA_KEYS)
    [record] = split_records(keyed, post(data))
    with pytest.raises(ValueError, match="refusing"):
        keyed.enrich(keyed.normalize(record)[0])


def test_media_keys_must_come_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        XChannel.Config.model_validate(settings(consumer_key="test-x-consumer-key"))


# -- the CRC is no signing oracle, and bodies X cannot have signed are not refused with a 5xx ----------------------

def crc(client: Any, token: str) -> Any:
    return client.get(f"/hooks/{CHANNEL}", query_string={"crc_token": token})


def test_a_crc_answer_cannot_sign_a_forged_delivery(x_runtime: Runtime) -> None:
    """The attack: ask the CRC for HMAC(secret, body) with the body as crc_token, then post the body with that
    answer as its signature. A JSON body is no CRC token, so it gets no answer; and a body shaped like a CRC token
    (which the CRC does answer) is never taken as a delivery, so the two sets never meet."""
    client = create_app(x_runtime).test_client()
    data = json.loads(raw("dm_text"))
    data["direct_message_events"][0]["message_create"]["message_data"]["text"] = "Send the refund to 0000"
    forged = json.dumps(data).encode()
    answer = crc(client, forged.decode())
    signature = answer.get_json()["response_token"] if answer.status_code == 200 else "sha256="
    posted = client.post(f"/hooks/{CHANNEL}", data=forged, headers={
        "Content-Type": "application/json", "x-twitter-webhooks-signature": signature})
    assert posted.status_code == 401 and count(x_runtime, inbox, CHANNEL) == 0
    assert answer.status_code == 400 and b"response_token" not in answer.get_data()
    token = "M2RkODJkZmMtYjlkYi00NmQ4LTk0MGUtM2JjYzkwM2Q4MjQ0"  # what X sends: base64 of a uuid
    answer = crc(client, token)
    assert answer.status_code == 200
    response_token = answer.get_json()["response_token"]
    posted = client.post(f"/hooks/{CHANNEL}", data=token, headers={
        "Content-Type": "application/json", "x-twitter-webhooks-signature": response_token})
    assert 400 <= posted.status_code < 500 and count(x_runtime, inbox, CHANNEL) == 0


@pytest.mark.parametrize("token", ["", "a" * 256, "{}", "abc def", "abc\n", "é"])
def test_only_short_opaque_crc_tokens_are_answered(token: str) -> None:
    from gateway.errors import MalformedRequest

    with pytest.raises(MalformedRequest):
        x_channel().handshake(HookRequest("GET", "", f"crc_token={quote(token)}", Headers({}), b"", HOOK_URL))


def test_crc_answers_are_rate_limited(x_runtime: Runtime) -> None:
    """A burst of CRCs is answered, then 429 with Retry-After until the budget refills (clock controlled)."""
    client = create_app(x_runtime).test_client()
    connector = x_runtime.channels[CHANNEL]
    assert isinstance(connector, XChannel)
    now = [1000.0]
    connector.crc_budget.clock = lambda: now[0]
    connector.crc_budget.updated = now[0]
    burst = int(connector.crc_budget.capacity)
    answers = [crc(client, f"token-{n}").status_code for n in range(burst)]
    assert answers == [200] * burst
    refused = crc(client, "token-again")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    now[0] += 60
    assert crc(client, "token-later").status_code == 200


def test_signed_json_nested_too_deep_is_400(x_runtime: Runtime) -> None:
    client = create_app(x_runtime).test_client()
    body = b'{"direct_message_events": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    response = send(client, post(body), CHANNEL)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert count(x_runtime, inbox, CHANNEL) == 0


def test_signed_lone_surrogate_is_stored_and_delivered_readable(x_runtime: Runtime) -> None:
    """JSON may escape half a surrogate pair (a text cut inside an emoji): the message is taken, the half character
    becomes U+FFFD, and the rest of the text reaches the CRM."""
    client = create_app(x_runtime).test_client()
    body = raw("dm_text").replace(b'"My parcel', b'"\\ud83d My parcel')
    response = send(client, post(body), CHANNEL)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert drain_pipeline(x_runtime) == 1
    with x_runtime.engine.connect() as conn:
        [data] = conn.execute(select(messages.c.data)).scalars().all()
    assert data["text"] == "\ufffd My parcel & the invoice don't match <order 77>"
