"""Form bodies of inbound-email webhooks (multipart/form-data or urlencoded), and emails rebuilt from parsed fields."""

from __future__ import annotations

import email
from dataclasses import dataclass
from email import policy
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from urllib.parse import parse_qsl

from gateway.errors import MalformedRequest


@dataclass(frozen=True)
class FormField:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def text(self, charset: str | None = None) -> str:
        from gateway.mail.charsets import decode_text

        return decode_text(self.data, charset or "utf-8")[0]


def parse_form(body: bytes, content_type: str) -> list[FormField]:
    """The fields of a form body, in order; ``MalformedRequest`` when it is not a readable form."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
        except (UnicodeDecodeError, ValueError):
            raise MalformedRequest("body is not a valid urlencoded form") from None
        return [FormField(name, value.encode("utf-8")) for name, value in pairs]
    if kind != "multipart/form-data":
        raise MalformedRequest(f"expected multipart/form-data or a urlencoded form, got {kind or 'none'}")
    if "boundary=" not in content_type:
        raise MalformedRequest("multipart/form-data without a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.message_from_bytes(head + body, policy=policy.HTTP)
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list) or not parts:
        raise MalformedRequest("multipart/form-data body has no parts")
    if any(type(d).__name__ in ("StartBoundaryNotFoundDefect", "CloseBoundaryNotFoundDefect")
           for d in message.defects):
        raise MalformedRequest("multipart/form-data body is truncated or its boundary does not match")
    fields = []
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise MalformedRequest("a form part has no name")
        data = part.get_payload(decode=True) or b""
        fields.append(FormField(str(name), data, part.get_filename(),
                                part.get_content_type() if part.get("Content-Type") else None))
    return fields


def first(fields: list[FormField], name: str) -> FormField | None:
    return next((f for f in fields if f.name == name), None)


_SKIP_HEADERS = {"content-type", "content-transfer-encoding", "mime-version"}


def rebuild_email(header_pairs: list[tuple[str, str]], text: str | None, html: str | None,
                  attachments: list[tuple[str, str, bytes, str | None]]) -> bytes:
    """An RFC 5322 message from a provider's parsed fields: the original headers, the decoded bodies and files.

    ``attachments`` holds (filename, content type, bytes, content id or None). Used when a provider posts the
    parsed parts instead of the raw MIME, so one normaliser handles both.
    """
    alternative = MIMEMultipart("alternative")
    if text is not None:
        alternative.attach(MIMEText(text, "plain", "utf-8"))
    if html is not None:
        alternative.attach(MIMEText(html, "html", "utf-8"))
    if attachments:
        root = MIMEMultipart("mixed")
        root.attach(alternative)
        for filename, content_type, data, content_id in attachments:
            maintype, _, subtype = (content_type or "application/octet-stream").partition("/")
            part = MIMEApplication(data, _subtype=subtype or "octet-stream")
            part.replace_header("Content-Type", f"{maintype}/{subtype or 'octet-stream'}")
            part.add_header("Content-Disposition", "inline" if content_id else "attachment", filename=filename)
            if content_id:
                part.add_header("Content-ID", f"<{content_id.strip('<>')}>")
            root.attach(part)
    else:
        root = alternative
    for name, value in header_pairs:
        if name.lower() not in _SKIP_HEADERS:
            root[name] = value.replace("\r", " ").replace("\n", " ")
    return root.as_bytes()


def header_block_pairs(block: str) -> list[tuple[str, str]]:
    """(name, value) pairs of a raw header block as posted by SendGrid's ``headers`` field."""
    message = email.message_from_string(block.strip("\r\n") + "\n\n", policy=policy.compat32)
    return [(name, str(value)) for name, value in message.items()]
