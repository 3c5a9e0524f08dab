"""An agent's reply as an email: the address to answer from, thread headers, a stable Message-ID, attachments.

Pure work (no network): ``compose`` turns a ``SendRequest`` into an ``EmailMessage`` and the envelope addresses;
``gateway.mail.smtp`` submits it. The reply answers the customer's latest email on the channel: ``In-Reply-To`` is
its Message-ID, ``References`` its References followed by that Message-ID (RFC 5322 section 3.6.4), the subject is
``Re: <their subject>``, and the Message-ID is derived from the send's token, so a second attempt after an uncertain
one carries the same Message-ID and a receiver that has the first copy recognises the second as the same mail.
"""

from __future__ import annotations

import fnmatch
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from gateway.attachments import SCHEME, AttachmentStore
from gateway.errors import PermanentError
from gateway.identity.normalize import AS_WRITTEN, InvalidIdentifier, normalize_email
from gateway.mail.autoreply import LOOP_HEADER
from gateway.model import IdentifierKind, Message, Party
from gateway.plugins import SendRequest

MAX_REFERENCES = 20  # a long thread keeps its first Message-ID and the latest ones, as mail clients do
_RE_PREFIX = re.compile(r"^\s*re\s*:", re.IGNORECASE)
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class ComposedReply:
    """The email to submit and its envelope."""

    mail: EmailMessage
    message_id: str  # without angle brackets
    sender: str
    recipient: str


def reply_subject(subject: str | None) -> str:
    """``Re: <subject>``, never ``Re: Re: ...``; a mail without a subject gets ``Re: (no subject)``."""
    subject = " ".join((subject or "").split())  # one line: a header value holds no line breaks
    if not subject:
        return "Re: (no subject)"
    return subject if _RE_PREFIX.match(subject) else f"Re: {subject}"


def reply_message_id(token: str, message_id: str, domain: str) -> str:
    """Our Message-ID for one outbound message, the same on every attempt.

    ``token`` (``gw-send-<send id>``) is what makes it per send; the outbound message's gateway id (a random
    UUID, stored with the send) is added because send ids restart in a new database and a reused Message-ID
    would make receivers drop a different reply as a copy of an old one.
    """
    local = re.sub(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]", "-", f"{token}.{message_id}")
    return f"{local}@{domain}"


def _email_of(party: Party) -> str | None:
    return next((i.value for i in party.identifiers if i.kind is IdentifierKind.EMAIL), None)


def _address_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return []


def receiving_addresses(reply_to: Message, extra: Iterable[str] = ()) -> set[str]:
    """The addresses the channel is known to have received this mail for: the envelope recipient the provider
    reports (SendGrid ``envelope.to``, Mailgun ``recipient``), the IMAP mailbox's user name, and ``extra``."""
    extras = reply_to.extras
    envelope = extras.get("envelope")
    found = _address_list(envelope.get("to")) if isinstance(envelope, dict) else []
    found += _address_list(extras.get("recipient")) + _address_list(extras.get("mailbox")) + list(extra)
    out = set()
    for address in found:
        try:
            out.add(normalize_email(address, AS_WRITTEN))
        except InvalidIdentifier:
            continue
    return out


def business_address(reply_to: Message, *, own_addresses: Iterable[str], known: set[str]) -> str:
    """The address the customer wrote to.

    Among the To and Cc addresses of the customer's mail, in order: the first that matches ``own_addresses``; else
    the first the channel is known to have received the mail for (``receiving_addresses``); else, when the mail
    had a single recipient, that one (a mail forwarded to the gateway keeps the address the customer chose). Any
    other case is ambiguous (the customer wrote to several people and none is known to be ours), and the reply is
    refused rather than sent from someone else's address: set ``smtp.from_address`` or ``own_addresses``.
    """
    recipients = [address for party in reply_to.recipients if (address := _email_of(party)) is not None]
    patterns = [p.lower() for p in own_addresses]
    for address in recipients:
        if any(fnmatch.fnmatch(address.lower(), pattern) for pattern in patterns):
            return address
    lowered = {k.lower() for k in known}
    for address in recipients:
        if address.lower() in lowered:
            return address
    if len(recipients) == 1:
        return recipients[0]
    shown = ", ".join(recipients[:5]) or "no address"
    raise PermanentError(
        f"Not sent: cannot tell which address the customer wrote to ({shown}); an admin sets smtp.from_address "
        "or own_addresses on this email channel.", code="from_address")


def _thread_headers(reply_to: Message) -> tuple[str | None, list[str]]:
    parent = reply_to.thread.message_id
    references = [r for r in reply_to.thread.references if r != parent]
    if parent:
        references.append(parent)
    if len(references) > MAX_REFERENCES:
        references = references[:1] + references[-(MAX_REFERENCES - 1):]
    return parent, references


def _address(name: str | None, address: str) -> Address:
    try:
        return Address(display_name=" ".join((name or "").split()), addr_spec=address)
    except (ValueError, IndexError) as exc:  # the header parser refuses an address it cannot write
        raise PermanentError(f"Not sent: {address!r} cannot be written as an email address ({exc}).",
                             code="invalid_address") from None


def _attachments(message: Message, store: AttachmentStore) -> tuple[list[tuple[bytes, str, str, str]], list[str]]:
    """Stored attachments, read to go into the mail as (bytes, maintype, subtype, filename); web links as text lines."""
    parts, links = [], []
    for attachment in message.attachments:
        location = attachment.location
        if location.startswith(SCHEME):
            try:
                data = store.read(location)
            except OSError:
                raise PermanentError(f"Not sent: the attachment {attachment.filename!r} is no longer stored.",
                                     code="attachment_missing") from None
            content_type = attachment.content_type or mimetypes.guess_type(attachment.filename)[0] or ""
            maintype, _, subtype = content_type.partition("/")
            if not maintype or not subtype:
                maintype, subtype = "application", "octet-stream"
            parts.append((data, maintype, subtype, attachment.filename))
        elif location.startswith(("https://", "http://")):
            links.append(f"{attachment.filename}: {location}")
        else:
            raise PermanentError(f"Not sent: the attachment {attachment.filename!r} is neither stored nor a web link "
                                 "and cannot go by email.", code="attachment_location")
    return parts, links


def compose(request: SendRequest, *, channel: str, from_address: str, from_name: str | None,
            message_id_domain: str, store: AttachmentStore, now: datetime | None = None) -> ComposedReply:
    """The reply email for ``request``: from ``from_address`` to the customer, in the customer's thread."""
    message, reply_to = request.message, request.reply_to
    recipient_party = next((p for p in message.recipients if _email_of(p)), None) or reply_to.sender
    recipient = _email_of(recipient_party)
    if recipient is None:
        raise PermanentError("Not sent: the customer has no email address on this conversation.", code="no_address")
    if not _DOMAIN.match(message_id_domain):
        raise PermanentError(f"Not sent: {message_id_domain!r} is not a domain for a Message-ID; an admin sets "
                             "smtp.message_id_domain.", code="message_id_domain")
    own_id = reply_message_id(request.token, message.id, message_id_domain)
    mail = EmailMessage()
    mail["From"] = _address(from_name, from_address)
    mail["To"] = _address(recipient_party.display_name, recipient)
    mail["Subject"] = reply_subject(reply_to.subject)
    mail["Date"] = format_datetime(now or datetime.now(UTC))
    mail["Message-ID"] = f"<{own_id}>"
    parent, references = _thread_headers(reply_to)
    if parent:
        mail["In-Reply-To"] = f"<{parent}>"
    if references:
        mail["References"] = " ".join(f"<{r}>" for r in references)
    mail[LOOP_HEADER] = channel  # our own reply never comes back in as a customer message
    if message.extras.get("automatic"):  # an acknowledgement: RFC 3834, so auto-responders do not answer it
        mail["Auto-Submitted"] = "auto-replied"
        mail["X-Auto-Response-Suppress"] = "All"
    parts, links = _attachments(message, store)
    text = message.text or message.full_text or ""
    if links:
        text = text.rstrip("\n") + "\n\n" + "\n".join(links)
    mail.set_content(text, cte=None if text.isascii() else "quoted-printable")  # 8bit needs BODY=8BITMIME
    for data, maintype, subtype, filename in parts:
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return ComposedReply(mail, own_id, from_address, recipient)
