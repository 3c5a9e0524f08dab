"""Form bodies of inbound-email webhooks (multipart/form-data or urlencoded), and emails rebuilt from parsed fields."""

from __future__ import annotations

import email
import re
from collections.abc import Collection
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from urllib.parse import parse_qsl, unquote_to_bytes

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


MAX_FORM_FIELDS = 1000  # an email with hundreds of attachments fits; parsing 52,000 fields took seconds of CPU
MAX_PART_HEADER_BYTES = 8 * 1024
_PART_NAME = re.compile(rb'(?im)^content-disposition:[^\n]*?;[ \t]*name=(?:"([^"\r\n]*)"|([^;\s"]+))')
_URLENCODED = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"


def _kind(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _boundary(content_type: str) -> bytes:
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise MalformedRequest("multipart/form-data without a boundary")
    return boundary.encode("latin-1", "replace")


def check_field_count(body: bytes, content_type: str, limit: int = MAX_FORM_FIELDS) -> None:
    """``MalformedRequest`` when the form has more than ``limit`` fields, counted in the raw bytes (no parsing)."""
    kind = _kind(content_type)
    if kind == _URLENCODED:
        fields = body.count(b"&") + 1
    elif kind == _MULTIPART:
        delimiter = b"--" + _boundary(content_type)
        fields = body.count(b"\n" + delimiter) + body.startswith(delimiter) - 1  # less the closing delimiter
    else:
        raise MalformedRequest(f"expected multipart/form-data or a urlencoded form, got {kind or 'none'}")
    if fields > limit:
        raise MalformedRequest(f"form has more than {limit} fields")


def find_fields(body: bytes, content_type: str, names: Collection[str], max_bytes: int) -> dict[str, bytes]:
    """The first value of each of a few small fields, read from the raw body without parsing the form.

    For what must be checked before a form is worth parsing (a signature carried in its fields). The field count
    is capped first; a part's headers over ``MAX_PART_HEADER_BYTES`` or a wanted value over ``max_bytes`` is a
    ``MalformedRequest``. Values are the raw bytes (multipart) or the percent-decoded ones (urlencoded).
    """
    check_field_count(body, content_type)
    found: dict[str, bytes] = {}
    if _kind(content_type) == _URLENCODED:
        for pair in body.split(b"&"):
            raw_name, _, raw_value = pair.partition(b"=")
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("latin-1")
            if name in names and name not in found:
                found[name] = _small(name, unquote_to_bytes(raw_value.replace(b"+", b" ")), max_bytes)
        return found
    opening = b"--" + _boundary(content_type)
    delimiter = b"\n" + opening
    position = 0 if body.startswith(opening) else body.find(delimiter) + 1  # where a delimiter line starts
    while position > 0 or body.startswith(opening):
        after = position + len(opening)
        line_end = body.find(b"\n", after)
        if body.startswith(b"--", after) or line_end < 0:
            break  # the closing delimiter, or nothing after the last one
        head_start = line_end + 1
        following = body.find(delimiter, head_start)
        end = len(body) if following < 0 else following - (body[following - 1:following] == b"\r")
        head_end, gap = _header_end(body, head_start, min(end, head_start + MAX_PART_HEADER_BYTES))
        if head_end < 0:
            raise MalformedRequest(f"a form part's headers are missing or over {MAX_PART_HEADER_BYTES} bytes")
        match = _PART_NAME.search(body, head_start, head_end)
        if match is not None:
            name = (match.group(1) if match.group(1) is not None else match.group(2)).decode("latin-1")
            if name in names and name not in found:
                found[name] = _small(name, body[head_end + gap:end], max_bytes)
        if following < 0:
            break
        position = following + 1
    return found


def _header_end(body: bytes, start: int, stop: int) -> tuple[int, int]:
    """Where a part's header block ends (and the length of the blank line after it), or (-1, 0)."""
    ends = [(index, len(gap)) for gap in (b"\r\n\r\n", b"\n\n") if (index := body.find(gap, start, stop)) >= 0]
    if not ends and body.startswith((b"\r\n", b"\n"), start):  # a part with no headers at all
        return start, 2 if body.startswith(b"\r\n", start) else 1
    return min(ends) if ends else (-1, 0)


def _small(name: str, value: bytes, max_bytes: int) -> bytes:
    if len(value) > max_bytes:
        raise MalformedRequest(f"form field {name!r} is over {max_bytes} bytes")
    return value


def parse_form(body: bytes, content_type: str) -> list[FormField]:
    """The fields of a form body, in order; ``MalformedRequest`` when it is not a readable form or has more than
    ``MAX_FORM_FIELDS`` fields (counted before anything is parsed)."""
    kind = _kind(content_type)
    if kind in (_URLENCODED, _MULTIPART):
        check_field_count(body, content_type)
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
