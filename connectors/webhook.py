"""A CRM that POSTs each delivered message as canonical JSON to any URL, HMAC-signed.

The receiver checks ``X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`` and
``X-Gateway-Timestamp`` (reject old timestamps), and deduplicates on ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Literal

import requests
from pydantic import Field, SecretStr

from gateway.errors import PermanentError, RetryableError, retry_after_seconds
from gateway.plugins import ConnectorConfig, CrmConnector, DeliveryItem, DeliveryResult, LinkStore


class WebhookConfig(ConnectorConfig):
    """Settings of a ``webhook`` CRM."""

    type: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://", description="Where each record is POSTed.")
    secret: SecretStr = Field(description="HMAC-SHA256 key for X-Gateway-Signature.")
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    mapping: str | None = Field(None, description="Mapping file; default mappings/webhook.yaml.")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def classify(response: requests.Response) -> None:
    """Raise the right error for a non-2xx answer: 408/429/5xx retry (Retry-After honoured), other 4xx do not."""
    status = response.status_code
    if status < 300:
        return
    if status in (408, 429) or status >= 500:
        raise RetryableError(f"HTTP {status}", code=str(status), retry_after=retry_after_seconds(response.headers))
    raise PermanentError(f"HTTP {status}: {response.text[:200]}", code=str(status))


class WebhookCrm(CrmConnector):
    """POSTs ``{"message", "customer", "conversation", "fields"}`` to a URL of your own."""

    type_name = "webhook"
    Config = WebhookConfig
    summary = "POST canonical JSON to any URL, HMAC-SHA256 signed, with an Idempotency-Key"
    default_mapping = "webhook.yaml"
    config: WebhookConfig

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        body = json.dumps({
            "message": item.message.model_dump(mode="json"),
            "customer": {"id": item.customer.id, "display_name": item.customer.display_name,
                         "identifiers": [{"kind": k, "value": v} for k, v in item.customer.identifiers]},
            "conversation": {"id": item.conversation.id, "channel": item.conversation.channel},
            "fields": dict(item.fields),
        }, ensure_ascii=False, sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": item.idempotency_key,
            "X-Gateway-Timestamp": timestamp,
            "X-Gateway-Signature": sign(self.config.secret.get_secret_value(), timestamp, body),
        }
        try:
            response = self.context.http.post(self.config.url, data=body, headers=headers,
                                              timeout=self.config.timeout_seconds)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetryableError(f"receiver unreachable: {type(exc).__name__}", code="network") from None
        classify(response)
        return DeliveryResult("posted", item.idempotency_key, detail=f"HTTP {response.status_code}")
