"""SendGrid Inbound Parse: inbound email posted as multipart/form-data, parsed or raw ("Send Raw") mode.

Inbound Parse signs nothing by default (its optional security policies are set up per webhook in SendGrid's
API and not used here), and anyone who learns the URL could post mail into the CRM. So the URL SendGrid is given
carries a secret: ``https://gw.example.com/hooks/<channel>?token=<url_token>``; requests without the right token are
refused with 401 before the body is read. The token is compared in constant time and is a required setting.
A query token rather than basic auth, because the parse URL is the one place SendGrid lets us put a secret and the
Inbound Parse settings page takes any URL.
https://www.twilio.com/docs/sendgrid/for-developers/parsing-email/setting-up-the-inbound-parse-webhook
"""

from __future__ import annotations

import contextlib
import json
import uuid
from email.utils import format_datetime, make_msgid
from typing import Any, Literal

from pydantic import Field, SecretStr

from gateway.errors import MalformedRequest, SignatureInvalid
from gateway.mail.forms import FormField, first, header_block_pairs, parse_form, rebuild_email
from gateway.mail.mime import UnparseableMail, provider_id, raw_digest
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.mail.smtp import SMTP_FIELD_DESCRIPTION, SmtpReplies, SmtpSettings
from gateway.model import ChannelType, Message
from gateway.plugins import WebhookChannel
from gateway.records import InboxItem, RawRecord
from gateway.signing import current_or_previous, matches_any
from gateway.storage.db import utcnow
from gateway.webhooks import Headers, HookRequest

TOKEN_PARAM = "token"


class SendgridConfig(EmailSettings):
    """Settings of a ``sendgrid`` channel (one Inbound Parse host/URL)."""

    type: Literal["sendgrid"] = "sendgrid"
    url_token: SecretStr = Field(
        description="Secret the parse URL carries as ?token=...; at least 16 characters (e.g. openssl rand -hex 24).",
        min_length=16)
    previous_url_token: SecretStr | None = Field(None, description="The former token, accepted during a change.")
    smtp: SmtpSettings | None = Field(None, description=SMTP_FIELD_DESCRIPTION)


class SendgridChannel(SmtpReplies, WebhookChannel):
    """Inbound email from SendGrid Inbound Parse (parsed fields or the raw MIME)."""

    type_name = "sendgrid"
    Config = SendgridConfig
    summary = ("SendGrid Inbound Parse (parsed and raw MIME modes); secret ?token= in the parse URL, "
               "constant-time compare")
    channel_types = (ChannelType.EMAIL,)
    max_body_bytes = 40 * 1024 * 1024  # SendGrid posts up to 30 MB of mail; form encoding adds some
    config: SendgridConfig

    def verify(self, request: HookRequest) -> None:
        given = request.query.get(TOKEN_PARAM, "")
        if not given:
            raise SignatureInvalid(f"missing ?{TOKEN_PARAM}= in the URL: give SendGrid the URL with the channel's "
                                   "url_token")
        tokens = current_or_previous(self.config.url_token, self.config.previous_url_token)
        if not matches_any(given, tokens, lambda token: token):
            raise SignatureInvalid(f"?{TOKEN_PARAM}= does not match this channel's url_token")

    def split(self, request: HookRequest) -> list[InboxItem]:
        content_type = request.headers.get("Content-Type", "")
        fields = parse_form(request.body, content_type)
        raw = first(fields, "email")
        if raw is not None:
            key = provider_id(raw.data)
        else:
            headers = first(fields, "headers")
            if headers is None or first(fields, "from") is None:
                raise MalformedRequest("neither 'email' (raw mode) nor 'headers' and 'from' (parsed mode) present")
            key = provider_id(headers.data + b"\r\n\r\n")
            if key.startswith("sha256:"):
                key = "sha256:" + raw_digest(request.body)
        return [InboxItem(key, request.body, content_type[:255], "message")]

    def normalize(self, record: RawRecord) -> list[Message]:
        fields = parse_form(record.body, record.content_type)
        charsets = _charsets(first(fields, "charsets"))
        raw = first(fields, "email")
        raw_bytes = _rebuild(fields, charsets) if raw is None else raw.data
        extras: dict[str, Any] = {}
        for name in ("spam_score", "SPF", "dkim", "sender_ip"):
            field = first(fields, name)
            if field is not None and field.data:
                extras[name.lower()] = field.text()
        envelope = first(fields, "envelope")
        if envelope is not None:
            with contextlib.suppress(ValueError):
                extras["envelope"] = json.loads(envelope.text())
        return email_to_messages(raw_bytes, record, connector_type=self.type_name, settings=self.config,
                                 attachments=self.context.attachments, received_at=record.received_at,
                                 extras=extras)

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        fields = {
            "headers": (f"From: {sender}\r\nTo: {recipient or 'support@example.com'}\r\nSubject: Hello\r\n"
                        f"Message-ID: {make_msgid(domain='example.com')}\r\nDate: {format_datetime(utcnow())}"),
            "from": sender, "to": recipient or "support@example.com", "subject": "Hello", "text": text,
            "charsets": json.dumps({"text": "utf-8", "subject": "utf-8", "from": "utf-8", "to": "utf-8"}),
            "envelope": json.dumps({"to": [recipient or "support@example.com"], "from": sender}),
        }
        body, content_type = multipart_body(fields)
        token = self.config.url_token.get_secret_value()
        return HookRequest("POST", "", f"{TOKEN_PARAM}={token}", Headers({"Content-Type": content_type}), body,
                           f"{public_url}?{TOKEN_PARAM}={token}")


def _charsets(field: FormField | None) -> dict[str, str]:
    if field is None:
        return {}
    try:
        value = json.loads(field.text())
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _rebuild(fields: list[FormField], charsets: dict[str, str]) -> bytes:
    """Parsed mode: the original header block plus the decoded text/html and the posted files."""
    headers = first(fields, "headers")
    if headers is None:
        raise UnparseableMail("parsed-mode post without a 'headers' field")
    text = first(fields, "text")
    html = first(fields, "html")
    info: dict[str, Any] = {}
    info_field = first(fields, "attachment-info")
    if info_field is not None:
        try:
            info = json.loads(info_field.text())
        except ValueError:
            info = {}
    files = []
    for field in fields:
        if field.name.startswith("attachment") and field.name[10:].isdigit():
            meta = info.get(field.name, {}) if isinstance(info, dict) else {}
            files.append((meta.get("filename") or field.filename or field.name,
                          meta.get("type") or field.content_type or "application/octet-stream",
                          field.data, meta.get("content-id")))
    return rebuild_email(header_block_pairs(headers.text(charsets.get("headers"))),
                         text.text(charsets.get("text")) if text is not None else None,
                         html.text(charsets.get("html")) if html is not None else None, files)


def multipart_body(fields: dict[str, str | bytes | tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as SendGrid and Mailgun post it (files as (filename, type, bytes))."""
    boundary = "xYzZY" + uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, content_type, data = value
            chunks.append(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                          f"Content-Type: {content_type}\r\n\r\n".encode())
            chunks.append(data)
        else:
            chunks.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            chunks.append(value.encode() if isinstance(value, str) else value)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
