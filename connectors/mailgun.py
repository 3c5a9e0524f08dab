"""Mailgun routes: inbound email forwarded to the gateway by a route's ``forward()`` action.

Each post carries ``timestamp``, ``token`` and ``signature`` = hex HMAC-SHA256(webhook signing key, timestamp +
token) as form fields; it is checked in constant time (against a previous key too, during a rotation) and the
timestamp must be inside the replay window. The signature covers no content, so each token is taken once, for the
post it came with (``gateway.replay``, kept in the database): the same signature on other content is a replay.
The three fields are read from the raw bytes before the form is parsed, so unsigned posts cost a scan only.
A route URL ending in ``mime`` receives ``body-mime`` (the raw MIME); otherwise the parsed fields are rebuilt into
an email so one normaliser handles both. Answers: 200 stored; 406 tells Mailgun not to retry (used for posts
without any message); anything else is retried by Mailgun for hours.
https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from typing import Any, Literal

from pydantic import Field, SecretStr

from gateway.errors import MalformedRequest, SignatureInvalid
from gateway.mail.forms import FormField, find_fields, first, parse_form, rebuild_email
from gateway.mail.mime import UnparseableMail, provider_id, raw_digest
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.mail.smtp import SMTP_FIELD_DESCRIPTION, SmtpReplies, SmtpSettings
from gateway.model import ChannelType, Message
from gateway.plugins import WebhookChannel
from gateway.records import InboxItem, RawRecord
from gateway.replay import MAX_TOKEN_LENGTH
from gateway.signing import current_or_previous, matches_any
from gateway.storage.db import utcnow
from gateway.webhooks import Headers, HookRequest

SIGNED_FIELDS = ("timestamp", "token", "signature")
_TIMESTAMP = re.compile(rb"[0-9]{1,12}")
_TOKEN = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_TOKEN_LENGTH)
_SIGNATURE = re.compile(rb"[0-9a-f]{64}")


class MailgunConfig(EmailSettings):
    """Settings of a ``mailgun`` channel (one route forwarding to the gateway)."""

    type: Literal["mailgun"] = "mailgun"
    signing_key: SecretStr = Field(description="The HTTP webhook signing key of the Mailgun account.")
    previous_signing_key: SecretStr | None = Field(None, description="The former key, accepted during a rotation.")
    replay_window_seconds: int = Field(
        300, ge=30, le=86400, description="Posts whose timestamp is further from now than this are refused.")
    smtp: SmtpSettings | None = Field(None, description=SMTP_FIELD_DESCRIPTION)


def signature_for(key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256(signing key, timestamp + token)."""
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


class MailgunChannel(SmtpReplies, WebhookChannel):
    """Inbound email from Mailgun routes (parsed fields or ``body-mime``)."""

    type_name = "mailgun"
    Config = MailgunConfig
    summary = ("Mailgun routes forward() (parsed and body-mime); HMAC-SHA256 of timestamp+token, replay window, "
               "previous key for rotation")
    channel_types = (ChannelType.EMAIL,)
    max_body_bytes = 40 * 1024 * 1024
    config: MailgunConfig

    def _fields(self, request: HookRequest) -> list[FormField]:
        return parse_form(request.body, request.headers.get("Content-Type", ""))

    def verify(self, request: HookRequest) -> None:
        # the signature travels inside the form: its three fields are read from the raw bytes (the field count
        # capped first), so nothing is parsed before the post is known to be Mailgun's and unused
        found = find_fields(request.body, request.headers.get("Content-Type", ""), SIGNED_FIELDS, MAX_TOKEN_LENGTH)
        timestamp, token, signature = (found.get(name, b"") for name in SIGNED_FIELDS)
        if not (timestamp and token and signature):
            raise SignatureInvalid("missing Mailgun signature fields (timestamp, token, signature)")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SignatureInvalid("timestamp is not a whole number of seconds")
        if not _TOKEN.fullmatch(token) or not _SIGNATURE.fullmatch(signature):
            raise SignatureInvalid("token or signature is not in Mailgun's form (printable ASCII, hex)")
        keys = current_or_previous(self.config.signing_key, self.config.previous_signing_key)
        if not matches_any(signature, keys, lambda key: signature_for(key, timestamp.decode(), token.decode())):
            raise SignatureInvalid("signature does not match: check the channel's signing_key (HTTP webhook "
                                   "signing key)")
        signed_at = int(timestamp)
        skew = abs(time.time() - signed_at)
        if skew > self.config.replay_window_seconds:
            raise SignatureInvalid(f"timestamp is {skew:.0f}s from now, outside the "
                                   f"{self.config.replay_window_seconds}s replay window")
        # the signature covers no content: its token is good for the one post it came with (and that post's retries)
        post = hashlib.sha256(self.name.encode() + b"\0" + request.body).hexdigest()
        until = datetime.fromtimestamp(signed_at + self.config.replay_window_seconds + 1, UTC)
        if not self.context.used_tokens.use("mailgun", token.decode(), post, until):
            raise SignatureInvalid("token already used by another post: a replayed signature")

    def split(self, request: HookRequest) -> list[InboxItem]:
        fields = self._fields(request)
        mime = first(fields, "body-mime")
        if mime is not None:
            key = provider_id(mime.data)
        else:
            if first(fields, "from") is None and first(fields, "sender") is None:
                raise MalformedRequest("neither 'body-mime' nor 'from'/'sender' present")
            key = provider_id(_header_block(fields) + b"\r\n\r\n")
            if key.startswith("sha256:"):  # no Message-Id: the content without the per-post signature fields
                unsigned = b"".join(f.name.encode() + b"=" + f.data for f in fields if f.name not in SIGNED_FIELDS)
                key = "sha256:" + raw_digest(unsigned)
        return [InboxItem(key, request.body, request.headers.get("Content-Type", "")[:255], "message")]

    def normalize(self, record: RawRecord) -> list[Message]:
        fields = parse_form(record.body, record.content_type)
        mime = first(fields, "body-mime")
        raw = mime.data if mime is not None else _rebuild(fields)
        extras: dict[str, Any] = {}
        for name in ("recipient", "X-Mailgun-Spf", "X-Mailgun-Sscore", "stripped-text"):
            field = first(fields, name)
            if field is not None and field.data:
                extras[name.lower().replace("-", "_")] = field.text()
        return email_to_messages(raw, record, connector_type=self.type_name, settings=self.config,
                                 attachments=self.context.attachments, received_at=record.received_at,
                                 extras=extras)

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        from connectors.sendgrid import multipart_body

        timestamp, token = str(int(time.time())), uuid.uuid4().hex * 2
        to = recipient or "support@example.com"
        headers = [["From", sender], ["To", to], ["Subject", "Hello"],
                   ["Message-Id", make_msgid(domain="example.com")], ["Date", format_datetime(utcnow())]]
        body, content_type = multipart_body({
            "recipient": to, "sender": sender, "from": sender, "subject": "Hello", "body-plain": text,
            "message-headers": json.dumps(headers), "timestamp": timestamp, "token": token,
            "signature": signature_for(self.config.signing_key.get_secret_value(), timestamp, token)})
        return HookRequest("POST", "", "", Headers({"Content-Type": content_type}), body, public_url)


def _headers(fields: list[FormField]) -> list[tuple[str, str]]:
    field = first(fields, "message-headers")
    if field is None:
        return []
    try:
        pairs = json.loads(field.text())
    except ValueError:
        raise UnparseableMail("message-headers is not JSON") from None
    return [(str(p[0]), str(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2]


def _header_block(fields: list[FormField]) -> bytes:
    try:
        pairs = _headers(fields)
    except UnparseableMail:
        return b""
    return "\r\n".join(f"{name}: {value}" for name, value in pairs).encode("utf-8", "replace")


def _rebuild(fields: list[FormField]) -> bytes:
    pairs = _headers(fields)
    names = {name.lower() for name, _ in pairs}
    for header, field_name in (("From", "from"), ("Subject", "subject"), ("To", "recipient")):
        field = first(fields, field_name)
        if header.lower() not in names and field is not None:
            pairs.append((header, field.text()))
    text = first(fields, "body-plain")
    html = first(fields, "body-html")
    content_ids: dict[str, str] = {}
    map_field = first(fields, "content-id-map")
    if map_field is not None:
        try:
            content_ids = {v: k.strip("<>") for k, v in json.loads(map_field.text()).items()}
        except (ValueError, AttributeError):
            content_ids = {}
    files = [(f.filename or f.name, f.content_type or "application/octet-stream", f.data, content_ids.get(f.name))
             for f in fields if f.name.startswith("attachment-") and f.name[11:].isdigit()]
    return rebuild_email(pairs, text.text() if text is not None else None,
                         html.text() if html is not None else None, files)
