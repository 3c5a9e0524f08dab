"""MIME parsing: headers (RFC 2047), bodies in their charsets, attachments (RFC 2231 names), dates and addresses.

Parsing uses the standard library's ``compat32`` policy, which never raises on malformed input; this module decides
what is too broken to be a customer message (``UnparseableMail``) and decodes every text itself, so that the
declared charset is tried first and detection used only when it is missing or wrong (see ``charsets``).
"""

from __future__ import annotations

import email
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import Header, decode_header
from email.message import Message as MimeMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from gateway.mail.charsets import decode_text
from gateway.mail.html import html_to_text

_MSGID = re.compile(r"<([^<>\s]+)>")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


class UnparseableMail(ValueError):
    """The bytes are not an email the gateway can turn into a message; the reason says why."""


@dataclass(frozen=True)
class MailPart:
    """An attachment or inline image, with its bytes (stored by the caller, never put into a database row)."""

    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass
class ParsedMail:
    """What the normaliser needs from one email, every text already decoded."""

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    sender: tuple[str, str]
    reply_to: list[tuple[str, str]]
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    date: datetime | None
    text: str
    html: str | None
    text_from_html: bool
    parts: list[MailPart]
    mime: MimeMessage
    notes: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)  # MIME defects found by the parser, "<part type>: <defect>"
    headers: TopHeaders | None = None  # the top-level headers by name; made from ``mime`` when not given

    def __post_init__(self) -> None:
        if self.headers is None:
            self.headers = TopHeaders(self.mime)

    def get(self, name: str) -> str | Header | None:
        """A top-level header's first value as ``mime.get`` gives it (None when absent)."""
        assert self.headers is not None
        return self.headers.get(name)

    def header(self, name: str) -> str:
        """A header's decoded value ('' when absent)."""
        return header_text(self.get(name))


class TopHeaders:
    """A message's own headers by lower-cased name, read once: ``get`` and ``get_all`` answer as the message's
    methods of those names do, without comparing the name with every header of the message on each look-up."""

    def __init__(self, mime: MimeMessage) -> None:
        self._fetch = mime.policy.header_fetch_parse
        self._by_name: dict[str, list[tuple[str, Any]]] = {}
        for name, value in mime.raw_items():
            self._by_name.setdefault(name.lower(), []).append((name, value))

    def get(self, name: str) -> str | Header | None:
        found = self._by_name.get(name.lower())
        return self._fetch(*found[0]) if found else None

    def get_all(self, name: str) -> list[str | Header]:
        return [self._fetch(*item) for item in self._by_name.get(name.lower(), ())]


def header_text(value: str | Header | None) -> str:
    """A header value with RFC 2047 encoded words (and raw 8-bit bytes) decoded, folding removed."""
    if value is None:
        return ""
    if isinstance(value, str):
        if "=?" not in value and value.isascii():
            return (_FOLD.sub("", value) if "\n" in value else value).strip()
        value = _FOLD.sub("", value)
    try:
        chunks = decode_header(value)
    except Exception:  # a malformed encoded word: keep it as written
        return str(value).strip()
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(decode_text(chunk, charset)[0])
    return "".join(out).strip()


def _raw(value: str | Header | None) -> str:
    if isinstance(value, Header):  # raw 8-bit bytes in a header: decode them before splitting addresses
        return header_text(value)
    return _FOLD.sub("", value) if value and "\n" in value else value or ""


# An unquoted display name that is itself an address, before the real one: "alice@example.com <bob@example.com>".
# getaddresses reads that as two addresses, the first being alice; quoting the name keeps one address, bob.
_ADDRESS_AS_NAME = re.compile(r'(^|,)\s*([^,"<>()]*@[^,"<>()]*?)\s*<([^<>@\s]+@[^<>\s]+)>')


# One address in its commonest forms, which getaddresses (a tokenizer, the larger part of parsing a mail's headers)
# reads as (name or "", address): "Name" <a@b>, Name Words <a@b>, <a@b>, a@b. Anything else goes to getaddresses.
_SIMPLE_ADDRESS = re.compile(r'[ \t]*(?:"([^"\\\r\n]*)"|([A-Za-z0-9]+(?: [A-Za-z0-9]+)*))?[ \t]*'
                             r'<([A-Za-z0-9._+-]+@[A-Za-z0-9.-]+)>[ \t]*|[ \t]*([A-Za-z0-9._+-]+@[A-Za-z0-9.-]+)[ \t]*')


def _simple_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """What ``getaddresses(values)`` gives when each value is one address in a common form, else None."""
    out = []
    for value in values:
        match = _SIMPLE_ADDRESS.fullmatch(value)
        if match is None:
            return None
        quoted, plain, address, bare = match.groups()
        out.append(("", bare) if bare else (quoted if quoted is not None else plain or "", address))
    return out


def addresses(mime: MimeMessage | TopHeaders, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header, names decoded.

    A display name that looks like an address is never taken for the address (the one in angle brackets is), and
    is not kept as a name either when it differs from the address: that is how spoofed senders are written.
    """
    values = [_ADDRESS_AS_NAME.sub(r'\1 "\2" <\3>', _raw(v)) for v in mime.get_all(name) or []]
    out = []
    simple = _simple_addresses(values)
    for display, address in simple if simple is not None else getaddresses(values):
        if not address:
            continue
        display = header_text(display)
        if "@" in display and display.strip().lower() != address.strip().lower():
            display = ""
        out.append((display, address.strip()))
    return out


def message_ids(value: str) -> list[str]:
    """Message-IDs in a header (without angle brackets), in order."""
    found = _MSGID.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]
    return found


def raw_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _decoded_params(part: MimeMessage) -> MimeMessage:
    """The part itself, or, when a parameter header holds raw 8-bit bytes (it is then a ``Header`` object, which
    the standard library's parameter parsing cannot read), a stand-in holding those headers decoded."""
    raw = [(n, part.get(n)) for n in ("Content-Disposition", "Content-Type")]
    if not any(isinstance(value, Header) for _, value in raw):
        return part
    stand_in = MimeMessage()
    for header_name, value in raw:
        if value is not None:
            stand_in[header_name] = header_text(value)
    return stand_in


def disposition(part: MimeMessage) -> str:
    """'attachment', 'inline' or ''."""
    return header_text(part.get("Content-Disposition")).split(";")[0].strip().lower()


def _part_filename(part: MimeMessage) -> str | None:
    headers = (part.get("Content-Disposition"), part.get("Content-Type"))
    if all(value is None or (isinstance(value, str) and "name" not in value.lower()) for value in headers):
        return None  # neither filename= nor name=: the parameter parsing below would find nothing
    part = _decoded_params(part)
    name = part.get_filename()  # RFC 2231 (filename*=) is collapsed here
    if name is None:
        name = part.get_param("name", header="content-type")
        if isinstance(name, tuple):
            name = email.utils.collapse_rfc2231_value(name)
    if name is None:
        return None
    decoded = header_text(name)  # some clients write RFC 2047 encoded words into filenames
    return decoded.replace("/", "_").replace("\\", "_").strip() or None


def _payload(part: MimeMessage) -> bytes:
    data = part.get_payload(decode=True)
    if data is None:
        return b""
    return data if isinstance(data, bytes) else bytes(data)


_BOUNDARY_LINE = re.compile(r"^--([0-9A-Za-z'()+_,./:=?-]{1,70})[ \t]*\r?$", re.MULTILINE)


def _walk(part: MimeMessage, out: list[tuple[MimeMessage, str]], notes: list[str], depth: int = 0) -> None:
    """Leaf parts in order, each with its content type; an attached message (message/rfc822) stays one leaf, it is
    not opened."""
    content_type = part.get_content_type()  # always "maintype/subtype"
    maintype, _, subtype = content_type.partition("/")
    if maintype == "message" and subtype in ("rfc822", "global"):
        out.append((part, content_type))
    elif part.is_multipart():
        for child in part.get_payload():
            _walk(child, out, notes, depth + 1)
    elif maintype == "multipart" and isinstance(part.get_payload(), str) and depth < 5:
        _recover_multipart(part, out, notes, depth)
    else:
        out.append((part, content_type))


def _recover_multipart(part: MimeMessage, out: list[tuple[MimeMessage, str]], notes: list[str], depth: int) -> None:
    """A multipart whose declared boundary never occurs: parse it again with the boundary its body does use, or
    read the body as plain text, so the customer's words are not lost."""
    data = part.get_payload(decode=True) or b""  # the bytes as received (the str payload has 8-bit bytes replaced)
    body = data.decode("ascii", "replace")
    found = _BOUNDARY_LINE.search(body)
    if found:
        notes.append(f"multipart boundary {part.get_boundary()!r} not found: recovered with {found.group(1)!r}")
        header = f'Content-Type: {part.get_content_type()}; boundary="{found.group(1)}"\n\n'.encode()
        _walk(email.message_from_bytes(header + data, policy=policy.compat32), out, notes, depth + 1)
        return
    notes.append(f"multipart boundary {part.get_boundary()!r} not found: body read as text")
    charset = part.get_content_charset()
    header = (f"Content-Type: text/plain; charset={charset}\n\n" if charset else "Content-Type: text/plain\n\n")
    text_part = email.message_from_bytes(header.encode() + data, policy=policy.compat32)
    out.append((text_part, text_part.get_content_type()))



def _defects(mime: MimeMessage) -> list[str]:
    """Every MIME defect the parser noted, with the content type of the part it was found in."""
    found = []
    for part in mime.walk():
        found.extend(f"{part.get_content_type()}: {type(d).__name__}" for d in part.defects)
    return found


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse raw RFC 5322 bytes; raise ``UnparseableMail`` when they are not a usable email."""
    if not raw or not raw.strip():
        raise UnparseableMail("empty message")
    first = raw.lstrip().split(b"\n", 1)[0]
    if not _HEADER_LINE.match(first) and not first.startswith(b"From "):
        raise UnparseableMail("does not start with a header line: not an RFC 5322 message")
    mime = email.message_from_bytes(raw, policy=policy.compat32)
    notes: list[str] = []
    defects = _defects(mime)
    headers = TopHeaders(mime)
    senders = addresses(headers, "From") or addresses(headers, "Sender")
    if not senders or "@" not in senders[0][1]:
        raise UnparseableMail(f"no usable From address (From: {header_text(headers.get('From'))[:120]!r})")
    date = None
    date_value = header_text(headers.get("Date"))
    if date_value:
        try:
            date = parsedate_to_datetime(date_value)
            if date.tzinfo is None:
                date = date.replace(tzinfo=UTC)
        except (TypeError, ValueError, IndexError):
            notes.append(f"unreadable Date header {date_value[:60]!r}")
    message_id = next(iter(message_ids(header_text(headers.get("Message-ID")))), None)
    in_reply_to = next(iter(message_ids(header_text(headers.get("In-Reply-To")))), None)
    references = tuple(message_ids(header_text(headers.get("References"))))

    plains: list[str] = []
    htmls: list[str] = []
    parts: list[MailPart] = []
    leaves: list[tuple[MimeMessage, str]] = []
    _walk(mime, leaves, notes)
    for part, content_type in leaves:
        kind = disposition(part)
        filename = _part_filename(part)
        # a text part with a file name is an attached file (a .txt, a .csv, a log), even marked inline; only a
        # message that is nothing but that part has it as its body
        is_body_text = (content_type in ("text/plain", "text/html") and kind != "attachment"
                        and (filename is None or part is mime))
        if is_body_text:
            data = _payload(part)
            text, _codec, note = decode_text(data, part.get_content_charset(), html=content_type == "text/html")
            if note:
                notes.append(f"{content_type}: {note}")
            (plains if content_type == "text/plain" else htmls).append(text)
            continue
        if content_type in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            data = inner[0].as_bytes() if isinstance(inner, list) and inner else _payload(part)
            subject = header_text(inner[0].get("Subject")) if isinstance(inner, list) and inner else ""
            parts.append(MailPart(filename or f"{subject or 'message'}.eml", content_type, data))
            continue
        if content_type.startswith("multipart/"):
            continue  # an empty multipart container
        data = _payload(part)
        content_id = part.get("Content-ID")
        inline = kind == "inline" or (kind == "" and content_id is not None)
        name = filename or _default_name(content_type, len(parts) + 1)
        parts.append(MailPart(name, content_type, data, inline=inline,
                              content_id=content_id.strip().strip("<>") if content_id else None))

    html = "\n".join(htmls) if htmls else None
    if plains and not any(p.strip() for p in plains) and html and html.strip():
        notes.append("text/plain part empty: text taken from the HTML part")
        plains = []  # an empty plain alternative beside the HTML that holds the message (some webmails send it)
    text_from_html = not plains and html is not None
    text = "\n\n".join(p.strip("\r\n") for p in plains) if plains else (html_to_text(html) if html else "")
    return ParsedMail(
        message_id=message_id, in_reply_to=in_reply_to, references=references,
        subject=header_text(headers.get("Subject")), sender=senders[0], reply_to=addresses(headers, "Reply-To"),
        to=addresses(headers, "To"), cc=addresses(headers, "Cc"), date=date, text=text.replace("\r\n", "\n"),
        html=html, text_from_html=text_from_html, parts=parts, mime=mime, notes=notes, defects=defects,
        headers=headers)


def _default_name(content_type: str, n: int) -> str:
    import mimetypes

    extension = mimetypes.guess_extension(content_type) or ".bin"
    return f"part{n}{extension}"


def provider_id(raw: bytes, mailbox: str | None = None) -> str:
    """The inbox key of one email: Message-ID plus mailbox, or a hash of the bytes when it has no Message-ID.

    Only the header block is read, so this never fails on a broken body.
    """
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = re.search(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
    ids = _MSGID.findall(match.group(1).decode("ascii", "replace")) if match else []
    prefix = f"{mailbox}:" if mailbox else ""
    if ids and len(prefix) + len(ids[0]) <= 240:
        return f"{prefix}{ids[0]}"
    return f"{prefix}sha256:{raw_digest(raw)}"
