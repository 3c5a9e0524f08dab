"""Acme SMS, a made-up SMS provider: the minimal webhook channel of docs/writing-a-connector.md.

Acme POSTs each inbound SMS as JSON ``{"id", "from", "to", "text", "sent_at"}`` with ``X-Acme-Timestamp`` (Unix
seconds) and ``X-Acme-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, SecretStr

from gateway.errors import MalformedRequest, SignatureInvalid
from gateway.identity.normalize import phone_identifier
from gateway.model import ChannelType, Message, Party
from gateway.plugins import ConnectorConfig, WebhookChannel
from gateway.records import InboxItem, RawRecord
from gateway.signing import current_or_previous, matches_any
from gateway.webhooks import Headers, HookRequest


class AcmeSmsConfig(ConnectorConfig):
    """Settings of an ``acme_sms`` channel."""

    type: Literal["acme_sms"] = "acme_sms"
    signing_secret: SecretStr = Field(description="The webhook signing secret shown in Acme's console.")
    previous_signing_secret: SecretStr | None = Field(
        None, description="The former signing secret, accepted too while a rotation is under way.")
    replay_window_seconds: int = Field(300, ge=30, le=3600, description="Older (or newer) timestamps are refused.")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Acme-Signature`` of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def parse_time(value: str) -> datetime:
    """An ISO 8601 time with its UTC offset, as Acme writes ``sent_at``; ``MalformedRequest`` otherwise."""
    with contextlib.suppress(ValueError):
        if (when := datetime.fromisoformat(value)).tzinfo is not None:
            return when
    raise MalformedRequest("sent_at is not an ISO 8601 time with a UTC offset")


class AcmeSmsChannel(WebhookChannel):
    """SMS received by Acme: one signed JSON request per message."""

    type_name = "acme_sms"
    Config = AcmeSmsConfig
    summary = "Acme SMS webhooks (an example): X-Acme-Signature over timestamp and body, replay window"
    channel_types = (ChannelType.SMS,)
    config: AcmeSmsConfig

    def verify(self, request: HookRequest) -> None:
        signature = request.headers.get("X-Acme-Signature", "")
        timestamp = request.headers.get("X-Acme-Timestamp", "")
        if not signature or not timestamp.isdigit():
            raise SignatureInvalid("missing X-Acme-Signature or X-Acme-Timestamp header")
        secrets = current_or_previous(self.config.signing_secret, self.config.previous_signing_secret)
        if not matches_any(signature, secrets, lambda secret: sign(secret, timestamp, request.body)):
            raise SignatureInvalid("X-Acme-Signature does not match the channel's signing_secret")
        if abs(time.time() - int(timestamp)) > self.config.replay_window_seconds:
            raise SignatureInvalid("X-Acme-Timestamp is outside the replay window (is the clock right?)")

    def split(self, request: HookRequest) -> list[InboxItem]:
        data = request.json_object()
        for key in ("id", "from", "to", "text", "sent_at"):
            if not isinstance(data.get(key), str) or (key != "text" and not data[key]):
                raise MalformedRequest(f"{key} is missing or not a string")
        parse_time(data["sent_at"])
        return [InboxItem(data["id"], request.body, "application/json")]

    def normalize(self, record: RawRecord) -> list[Message]:
        data, region = json.loads(record.body), self.context.default_region
        return [self.message(
            record, channel=ChannelType.SMS, provider_message_id=data["id"],
            sender=Party(identifiers=(phone_identifier(data["from"], region),)),
            recipients=(Party(identifiers=(phone_identifier(data["to"], region),)),),
            text=data["text"], full_text=data["text"], sent_at=parse_time(data["sent_at"]))]

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        body = json.dumps({"id": f"acme-{uuid.uuid4().hex}", "from": sender, "to": recipient or "+15555550100",
                           "text": text, "sent_at": datetime.now(UTC).isoformat()}).encode()
        stamp = str(int(time.time()))
        headers = Headers({"Content-Type": "application/json", "X-Acme-Timestamp": stamp,
                           "X-Acme-Signature": sign(self.config.signing_secret.get_secret_value(), stamp, body)})
        return HookRequest("POST", "", "", headers, body, public_url)
