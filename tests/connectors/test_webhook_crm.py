"""The webhook CRM: the conformance suite, signatures a receiver can verify, and the Idempotency-Key."""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import responses

from connectors.webhook import WebhookConfig, WebhookCrm, sign
from gateway.errors import PermanentError, RetryableError
from gateway.plugins import ConnectorContext, CrmConnector
from tests.conformance.crm import (
    CONVERSATION_ID,
    CUSTOMER_ID,
    HttpCrmConformance,
    MemoryLinkStore,
    delivery_item,
)

URL = "https://crm.example.com/hooks/gateway"
SECRET = "test-webhook-secret"


def webhook(http: requests.Session | None = None) -> WebhookCrm:
    config = WebhookConfig(url=URL, secret=SECRET)
    return WebhookCrm("hook", config, ConnectorContext(http=http or requests.Session()))


def posted(mocked: responses.RequestsMock) -> list[Any]:
    return [c.request for c in mocked.calls if c.request.method == "POST" and c.request.url == URL]


def receiver_accepts(request: Any, secret: str = SECRET, max_age: int = 300) -> bool:
    """What a receiver does: recompute the signature over ``{timestamp}.{body}`` and check the timestamp's age."""
    timestamp = request.headers["X-Gateway-Timestamp"]
    expected = sign(secret, timestamp, request.body)
    fresh = abs(time.time() - int(timestamp)) <= max_age
    return fresh and hmac.compare_digest(expected, request.headers["X-Gateway-Signature"])


class TestWebhookConformance(HttpCrmConformance):
    """The webhook CRM passes the shared suite; the receiver dedupes on Idempotency-Key, so a write is a key."""

    secrets: ClassVar[tuple[str, ...]] = (SECRET,)

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return webhook(http)

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        mocked.post(URL, status=202)

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        return len({request.headers["Idempotency-Key"] for request in posted(mocked)})

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        accepted = [c.request for c in mocked.calls if c.request.method == "POST" and c.request.url == URL
                    and isinstance(c.response, requests.Response) and c.response.status_code < 300]
        by_key = {request.headers["Idempotency-Key"]: json.loads(request.body)["message"]["id"]
                  for request in accepted}
        return list(by_key.values())

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        mocked.post(URL, status=status, body=body, headers=headers)

    def error_body(self, status: int) -> tuple[str, str]:
        return json.dumps({"error": "invalid_payload", "status": status}), str(status)


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock() as mock:
        yield mock


def test_body_is_canonical_json_signed_for_the_receiver(mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=200)
    item = delivery_item(crm="hook")
    result = webhook().deliver(item, MemoryLinkStore())

    (request,) = posted(mocked)
    assert result.operation == "posted"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == item.idempotency_key
    assert request.headers["X-Gateway-Signature"].startswith("sha256=")
    assert receiver_accepts(request)
    assert json.loads(request.body) == {
        "message": item.message.model_dump(mode="json"),
        "customer": {"id": CUSTOMER_ID, "display_name": None,
                     "identifiers": [{"kind": "phone", "value": "+14017122661"}]},
        "conversation": {"id": CONVERSATION_ID, "channel": "sms"},
        "fields": dict(item.fields),
    }
    assert SECRET not in request.body.decode() + json.dumps(dict(request.headers))


def test_receiver_rejects_tampering_and_wrong_secret(mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=200)
    webhook().deliver(delivery_item(crm="hook"), MemoryLinkStore())
    (request,) = posted(mocked)

    assert not receiver_accepts(request, secret="another-secret")
    tampered = request.copy()
    tampered.body = request.body.replace(b"never arrived", b"has arrived")
    assert not receiver_accepts(tampered)
    restamped = request.copy()
    restamped.headers["X-Gateway-Timestamp"] = str(int(request.headers["X-Gateway-Timestamp"]) + 1)
    assert not receiver_accepts(restamped)


def test_replay_sends_the_same_idempotency_key(mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=200)
    item = delivery_item(crm="hook")
    crm = webhook()
    crm.deliver(item, MemoryLinkStore())
    crm.deliver(replace(item, attempt=2), MemoryLinkStore())

    first, second = posted(mocked)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == item.idempotency_key
    assert first.body == second.body
    assert receiver_accepts(second)


@pytest.mark.parametrize(("status", "error"), [
    (408, RetryableError), (429, RetryableError), (502, RetryableError), (504, RetryableError),
    (401, PermanentError), (403, PermanentError), (404, PermanentError), (409, PermanentError),
])
def test_status_classification(mocked: responses.RequestsMock, status: int, error: type[Exception]) -> None:
    mocked.post(URL, status=status, body="nope")
    with pytest.raises(error) as caught:
        webhook().deliver(delivery_item(crm="hook"), MemoryLinkStore())
    assert caught.value.code == str(status)


def test_retry_after_in_http_date_form_is_not_misread(mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    with pytest.raises(RetryableError) as caught:
        webhook().deliver(delivery_item(crm="hook"), MemoryLinkStore())
    assert caught.value.retry_after is None


REPLY_SECRET = "test-reply-key"


def two_way_webhook(http: requests.Session | None = None) -> WebhookCrm:
    config = WebhookConfig(url=URL, secret=SECRET, reply_secret=REPLY_SECRET)
    return WebhookCrm("hook", config, ConnectorContext(http=http or requests.Session()))


def test_reply_secret_must_differ_from_the_signing_secret() -> None:
    with pytest.raises(ValueError, match="must differ"):
        WebhookConfig(url=URL, secret=SECRET, reply_secret=SECRET)


def test_a_signed_reply_is_taken_and_one_signed_with_our_own_key_is_refused() -> None:
    from gateway import signed_replies
    from gateway.errors import SignatureInvalid
    from gateway.records import RawRecord
    from gateway.webhooks import Headers

    crm = two_way_webhook()
    good = signed_replies.sample(crm.config.reply_secret, conversation_id=CONVERSATION_ID, text="On its way",
                                 public_url="https://gw.example.com/crm-hooks/hook")
    crm.verify_reply_hook(good)
    [item] = crm.split_reply_hook(good)
    record = RawRecord(1, "crm:hook", item.provider_id, item.kind, item.body, item.content_type, Headers({}),
                       "", datetime.now(UTC))
    [reply] = crm.agent_replies(record, MemoryLinkStore())
    assert (reply.conversation_id, reply.text, reply.author) == (CONVERSATION_ID, "On its way", "Simulated agent")
    # what the gateway itself posts is signed with `secret`: played back as a reply it is refused
    ours = signed_replies.sample(crm.config.secret, conversation_id=CONVERSATION_ID, text="x", public_url="")
    with pytest.raises(SignatureInvalid):
        crm.verify_reply_hook(ours)
    with pytest.raises(SignatureInvalid, match="not enabled"):
        webhook().verify_reply_hook(good)


def test_a_note_is_posted_signed_with_its_key_as_the_idempotency_key() -> None:
    with responses.RequestsMock() as mocked:
        mocked.post(URL, status=202)
        two_way_webhook().post_note(CONVERSATION_ID, "Not delivered: window closed", MemoryLinkStore(), key="k-1")
        [call] = mocked.calls
    assert receiver_accepts(call.request)
    assert call.request.headers["Idempotency-Key"] == "k-1"
    assert json.loads(call.request.body)["note"] == {"conversation_id": CONVERSATION_ID,
                                                      "text": "Not delivered: window closed", "internal": True}
