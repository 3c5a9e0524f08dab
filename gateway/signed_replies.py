"""The gateway's own agent-reply endpoint: any system may post an agent's reply for a conversation.

``POST {public_url}/crm-hooks/{crm}`` with a JSON body

    {"conversation_id": "...", "reply_id": "...", "text": "...", "author": "Ann", "author_id": "42",
     "created_at": "2026-11-29T10:00:00Z", "attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
     "url": "https://files.example.com/a.pdf"}]}

signed like the outbound webhook: ``X-Gateway-Timestamp`` (Unix seconds) and
``X-Gateway-Signature: sha256=<hex HMAC-SHA256(reply_secret, "{timestamp}.{body}")>``. The key is the CRM's
``reply_secret``, never the key the gateway signs its own posts with, so a post of ours cannot be played back as a
reply. A reply is sent once per ``reply_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, ValidationError

from gateway.errors import MalformedRequest, SignatureInvalid
from gateway.model import Attachment
from gateway.plugins import AgentReplies, AgentReply, LinkStore
from gateway.records import InboxItem, RawRecord
from gateway.signing import equal
from gateway.webhooks import Headers, HookRequest, load_json

SIGNATURE_HEADER = "X-Gateway-Signature"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"
REPLAY_WINDOW_SECONDS = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
MAX_ATTACHMENTS = 10


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>``: the gateway's signature scheme, both ways."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class _ReplyAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=255)
    url: HttpUrl


class ReplyBody(BaseModel):
    """The reply a system posts; unknown keys are refused so a typo is an error, not a silent drop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: str = Field(min_length=1, max_length=32)
    reply_id: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=32_000)
    author: str | None = Field(None, max_length=200)
    author_id: str | None = Field(None, max_length=100)
    created_at: datetime | None = None
    attachments: list[_ReplyAttachment] = Field([], max_length=MAX_ATTACHMENTS)


def verify(request: HookRequest, secret: SecretStr | None, now: float | None = None) -> None:
    """Check the signature and the timestamp's freshness before anything is parsed."""
    if secret is None:
        raise SignatureInvalid("agent replies are not enabled for this crm (set reply_secret)")
    signature = request.headers.get(SIGNATURE_HEADER, "")
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    if not signature or not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureInvalid(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} (Unix seconds)")
    if abs((now if now is not None else time.time()) - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} outside the {REPLAY_WINDOW_SECONDS} s window")
    if not equal(signature, sign(secret.get_secret_value(), timestamp, request.body)):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the body (check reply_secret)")


def parse(body: bytes) -> ReplyBody:
    data = load_json(body)
    try:
        return ReplyBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise MalformedRequest(f"{where}: {first['msg']}") from None


def split(request: HookRequest) -> list[InboxItem]:
    reply = parse(request.body)
    return [InboxItem(f"reply:{reply.reply_id}", request.body, "application/json", "agent_reply")]


def replies(record: RawRecord) -> list[AgentReply]:
    reply = parse(record.body)
    created = reply.created_at.astimezone(UTC) if reply.created_at and reply.created_at.tzinfo else record.received_at
    return [AgentReply(
        reply_id=reply.reply_id, conversation_id=reply.conversation_id, text=reply.text, created_at=created,
        author=reply.author, author_id=reply.author_id,
        attachments=tuple(Attachment(filename=a.filename, content_type=a.content_type, location=str(a.url))
                          for a in reply.attachments))]


def sample(secret: SecretStr | None, *, conversation_id: str, text: str, public_url: str) -> HookRequest:
    """A signed reply as another system would post it (``gateway simulate --agent-reply``)."""
    if secret is None:
        raise ValueError("set reply_secret on this crm to take agent replies")
    body: dict[str, Any] = {"conversation_id": conversation_id, "reply_id": f"sim-{uuid.uuid4().hex[:12]}",
                            "text": text, "author": "Simulated agent", "author_id": "simulated"}
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time()))
    headers = Headers({"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                       SIGNATURE_HEADER: sign(secret.get_secret_value(), timestamp, raw)})
    return HookRequest("POST", "", "", headers, raw, public_url)


class SignedReplies(AgentReplies):
    """``AgentReplies`` through this endpoint, for a CRM whose config has a ``reply_secret`` setting."""

    config: Any

    def verify_reply_hook(self, request: HookRequest) -> None:
        verify(request, self.config.reply_secret)

    def split_reply_hook(self, request: HookRequest) -> list[InboxItem]:
        return split(request)

    def agent_replies(self, record: RawRecord, links: LinkStore) -> list[AgentReply]:
        return replies(record)

    def sample_reply_hook(self, *, conversation_id: str, text: str, public_url: str) -> HookRequest:
        return sample(self.config.reply_secret, conversation_id=conversation_id, text=text, public_url=public_url)
