"""A CRM that POSTs each delivered message as canonical JSON to any URL, HMAC-signed.

The receiver checks ``X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`` and
``X-Gateway-Timestamp`` (reject old timestamps), and deduplicates on ``Idempotency-Key``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import requests
from pydantic import Field, SecretStr, model_validator

from gateway.errors import PermanentError, RetryableError, retry_after_seconds
from gateway.plugins import (
    CrmConfig,
    CrmConnector,
    DeliveryItem,
    DeliveryResult,
    InternalNotes,
    LinkStore,
)
from gateway.signed_replies import SignedReplies, sign


class WebhookConfig(CrmConfig):
    """Settings of a ``webhook`` CRM."""

    type: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://", description="Where each record is POSTed.")
    secret: SecretStr = Field(description="HMAC-SHA256 key for X-Gateway-Signature.")
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    reply_secret: SecretStr | None = Field(
        None, description="Key other systems sign agent replies with (POST /crm-hooks/NAME, X-Gateway-Signature); "
                          "must differ from secret. Unset: no replies are taken.")

    @model_validator(mode="after")
    def _distinct_keys(self) -> WebhookConfig:
        if self.reply_secret is not None and self.reply_secret.get_secret_value() == self.secret.get_secret_value():
            raise ValueError("reply_secret must differ from secret (each direction has its own key)")
        return self


def classify(response: requests.Response) -> None:
    """Raise the right error for a non-2xx answer: 408/429/5xx retry (Retry-After honoured), other 4xx do not."""
    status = response.status_code
    if status < 300:
        return
    if status in (408, 429) or status >= 500:
        raise RetryableError(f"HTTP {status}", code=str(status), retry_after=retry_after_seconds(response.headers))
    raise PermanentError(f"HTTP {status}: {response.text[:200]}", code=str(status))


class WebhookCrm(CrmConnector, SignedReplies, InternalNotes):
    """POSTs ``{"message", "customer", "conversation", "fields"}`` to a URL of your own."""

    type_name = "webhook"
    Config = WebhookConfig
    summary = "POST canonical JSON to any URL, HMAC-SHA256 signed, with an Idempotency-Key"
    default_mapping = "webhook.yaml"
    config: WebhookConfig

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        body = {
            "message": item.message.model_dump(mode="json"),
            "customer": {"id": item.customer.id, "display_name": item.customer.display_name,
                         "identifiers": [{"kind": k, "value": v} for k, v in item.customer.identifiers]},
            "conversation": {"id": item.conversation.id, "channel": item.conversation.channel},
            "fields": dict(item.fields),
        }
        response = self._post(body, item.idempotency_key)
        return DeliveryResult("posted", item.idempotency_key, detail=f"HTTP {response.status_code}")

    def _post(self, record: dict[str, Any], idempotency_key: str) -> requests.Response:
        body = json.dumps(record, ensure_ascii=False, sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            "X-Gateway-Timestamp": timestamp,
            "X-Gateway-Signature": sign(self.config.secret.get_secret_value(), timestamp, body),
        }
        try:
            response = self.context.http.post(self.config.url, data=body, headers=headers,
                                              timeout=self.config.timeout_seconds)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetryableError(f"receiver unreachable: {type(exc).__name__}", code="network") from None
        classify(response)
        return response

    # -- two-way -----------------------------------------------------------------------------------------------
    def post_note(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        """POSTs ``{"note": {"conversation_id", "text", "internal": true}}``, signed, with the note's key."""
        self._post({"note": {"conversation_id": conversation_id, "text": text, "internal": True}}, key)
