"""The Acme SMS example channel: the shared channel suite, secret rotation, the replay window, ``sample_request``.

Requests are built as Acme documents them: a JSON body ``{"id", "from", "to", "text", "sent_at"}`` with
``X-Acme-Timestamp`` and ``X-Acme-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from acme_sms import AcmeSmsChannel, sign

from gateway.errors import SignatureInvalid
from gateway.plugins import ChannelConnector
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import ChannelConformance, Expected, split_records
from tests.conftest import PUBLIC_URL

CHANNEL = "sms-acme"
SECRET = "test-acme-signing-secret"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
CUSTOMER, BUSINESS = "+14155550100", "+15555550123"
PAYLOADS: dict[str, dict[str, Any]] = {
    "sms": {"id": "acme-msg-0001", "from": CUSTOMER, "to": BUSINESS, "text": "Where is my order?",
            "sent_at": "2025-03-09T14:30:00Z"},
    "sms_offset_time": {"id": "acme-msg-0002", "from": "+91 98765 43210", "to": BUSINESS,
                        "text": "ഓർഡർ എവിടെ? 📦", "sent_at": "2025-03-09T20:00:00+05:30"},
}


def acme_request(body: bytes | dict[str, Any], *, secret: str = SECRET, timestamp: int | None = None) -> HookRequest:
    """A request as Acme sends it, signed with ``secret`` at ``timestamp`` (default now)."""
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = Headers({"Content-Type": "application/json", "X-Acme-Timestamp": stamp,
                       "X-Acme-Signature": sign(secret, stamp, raw)})
    return HookRequest("POST", f"/hooks/{CHANNEL}", "", headers, raw, HOOK_URL)


class TestAcmeSmsConformance(ChannelConformance):
    """The shared suite for ``acme_sms``: timestamped signatures (stale ones refused), no handshake."""

    connector_class = AcmeSmsChannel
    channel_name = CHANNEL
    required_secrets = ("signing_secret",)
    has_timestamp = True
    expected = {
        "sms": Expected("message", ({
            "channel": "sms", "provider_message_id": "acme-msg-0001", "connector_type": "acme_sms",
            "sender.identifiers": [{"kind": "phone", "value": CUSTOMER}],
            "recipients.0.identifiers": [{"kind": "phone", "value": BUSINESS}],
            "text": "Where is my order?", "full_text": "Where is my order?", "sent_at": "2025-03-09T14:30:00Z",
        },), ("acme-msg-0001",)),
        "sms_offset_time": Expected("message", ({
            "sender.identifiers": [{"kind": "phone", "value": "+919876543210"}], "text": "ഓർഡർ എവിടെ? 📦",
            "sent_at": "2025-03-09T14:30:00Z",
        },), ("acme-msg-0002",)),
    }

    def channel_settings(self) -> dict[str, Any]:
        return {"type": "acme_sms", "signing_secret": SECRET}

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return acme_request(PAYLOADS[fixture])

    def stale_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return acme_request(PAYLOADS[fixture], timestamp=int(time.time()) - 3600)

    def tamper(self, request: HookRequest) -> HookRequest:
        body = request.body.replace(b'"text": "', b'"text": "Refund to account 0000. ', 1)
        assert body != request.body
        return HookRequest(request.method, request.path, request.query_string, request.headers, body,
                           request.public_url)

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        good = json.dumps(PAYLOADS["sms"]).encode()
        return {
            "not_json": acme_request(b"id=acme-msg-0001&text=hi"),
            "truncated": acme_request(good[: len(good) // 2]),
            "json_array": acme_request(b"[]"),
            "no_id": acme_request({k: v for k, v in PAYLOADS["sms"].items() if k != "id"}),
            "from_not_a_string": acme_request({**PAYLOADS["sms"], "from": 14155550100}),
            "sent_at_without_offset": acme_request({**PAYLOADS["sms"], "sent_at": "2025-03-09T14:30:00"}),
            "sent_at_not_a_time": acme_request({**PAYLOADS["sms"], "sent_at": "yesterday"}),
        }


def acme(**settings: Any) -> AcmeSmsChannel:
    connector = TestAcmeSmsConformance().make_connector({"type": "acme_sms", "signing_secret": SECRET, **settings})
    assert isinstance(connector, AcmeSmsChannel)
    return connector


def test_signature_is_the_documented_hmac() -> None:
    """sha256= and the hex HMAC-SHA256 of the timestamp, a dot and the raw body."""
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", b"{}") == f"sha256={expected}"


def test_previous_secret_accepted_during_rotation() -> None:
    rotating = acme(signing_secret="test-new-secret", previous_signing_secret=SECRET)
    rotating.verify(acme_request(PAYLOADS["sms"]))
    rotating.verify(acme_request(PAYLOADS["sms"], secret="test-new-secret"))
    for other in ("test-unrelated-secret", SECRET[:-1]):
        with pytest.raises(SignatureInvalid, match="does not match"):
            rotating.verify(acme_request(PAYLOADS["sms"], secret=other))


def test_timestamps_outside_the_window_are_refused_either_way() -> None:
    connector = acme(replay_window_seconds=60)
    connector.verify(acme_request(PAYLOADS["sms"], timestamp=int(time.time()) - 50))
    for skew in (-120, 120):
        with pytest.raises(SignatureInvalid, match="replay window"):
            connector.verify(acme_request(PAYLOADS["sms"], timestamp=int(time.time()) + skew))


def test_sample_request_round_trips() -> None:
    """What ``gateway simulate`` sends verifies, splits and normalises to the customer's number in E.164."""
    connector = acme()
    request = connector.sample_request(sender="+1 415 555 0100", text="Any news?", recipient=None,
                                       public_url=HOOK_URL)
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert (message.text, message.sender.identifiers[0].value) == ("Any news?", CUSTOMER)
    assert message.provider_message_id == record.provider_id
