"""One email (raw bytes) into the canonical message; shared by the ``imap``, ``sendgrid`` and ``mailgun`` channels."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import Field

from gateway.attachments import AttachmentStore, AttachmentTooLarge
from gateway.identity.normalize import AS_WRITTEN, InvalidIdentifier, normalize_email
from gateway.mail.autoreply import auto_reason, robot_reason
from gateway.mail.mime import UnparseableMail, parse_mail
from gateway.mail.quotes import DEFAULT_LANGUAGES, visible_reply
from gateway.model import Attachment, ChannelType, Identifier, IdentifierKind, Message, Party, ThreadRef
from gateway.plugins import ConnectorConfig, inbound_message
from gateway.records import RawRecord


class EmailSettings(ConnectorConfig):
    """Settings every email channel shares: what counts as a customer message, and attachment limits."""

    ignore_auto_replies: bool = Field(
        True, description="Auto-replies, out-of-office notes and bounces become no message (counted as ignored).")
    ignore_mailing_lists: bool = Field(True, description="Mail carrying List-Id or List-Unsubscribe is ignored.")
    own_addresses: list[str] = Field(
        [], description="The gateway's and the business's own sending addresses (glob patterns): mail from them "
                        "is ignored, so our own outgoing mail never loops back in.")
    max_attachment_bytes: int = Field(
        25 * 1024 * 1024, gt=0, description="Larger attachments are not stored; the message lists them as skipped.")
    reply_languages: list[str] = Field(
        list(DEFAULT_LANGUAGES), description="No longer used: the reply headers of every supported language are "
                                             "recognised, whatever the customer's mail client writes them in.")


@lru_cache(maxsize=1024)  # a channel's own addresses are a recipient of nearly every mail; parties are immutable
def _party(name: str, address: str) -> Party | None:
    try:
        value = normalize_email(address, AS_WRITTEN)  # the configured rules apply when the sender is resolved
    except InvalidIdentifier:
        return None
    return Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL, value=value),), display_name=name or None)


def email_to_messages(raw: bytes, record: RawRecord, *, connector_type: str, settings: EmailSettings,
                      attachments: AttachmentStore, received_at: datetime,
                      extras: dict[str, Any] | None = None) -> list[Message]:
    """Normalise one email; [] for auto-replies, bounces and our own mail (when configured so).

    Raises ``UnparseableMail`` with the reason for bytes that are not a usable email: the pipeline quarantines them.
    """
    mail = parse_mail(raw)
    reason = auto_reason(mail, own_addresses=tuple(settings.own_addresses),
                         ignore_lists=settings.ignore_mailing_lists)
    if reason is not None and (settings.ignore_auto_replies or reason == "own_mail"):
        return []
    sender = _party(*mail.sender)
    if sender is None:
        raise UnparseableMail(f"From address {mail.sender[1][:120]!r} is not an email address")
    recipients = tuple(p for p in (_party(n, a) for n, a in mail.to + mail.cc) if p is not None)
    stored: list[Attachment] = []
    skipped: list[dict[str, Any]] = []
    content_ids: dict[str, str] = {}
    for part in mail.parts:
        if len(part.data) > settings.max_attachment_bytes:
            skipped.append({"filename": part.filename, "content_type": part.content_type, "size": len(part.data),
                            "reason": f"over the {settings.max_attachment_bytes}-byte limit"})
            continue
        try:
            stored.append(attachments.put(part.data, part.filename, part.content_type, inline=part.inline))
            if part.content_id:
                content_ids[part.content_id] = stored[-1].sha256 or ""
        except AttachmentTooLarge as exc:
            skipped.append({"filename": part.filename, "content_type": part.content_type, "size": len(part.data),
                            "reason": str(exc)})
    info: dict[str, Any] = dict(extras or {})
    if mail.notes:
        info["mime_notes"] = mail.notes[:20]
    if mail.defects:
        info["mime_defects"] = mail.defects[:20]
    if skipped:
        info["attachments_skipped"] = skipped
    if reason is not None:
        info["auto_reply"] = reason
    robot = reason if reason is not None and reason != "own_mail" else robot_reason(
        mail, known_not_auto=reason is None and settings.ignore_mailing_lists)
    if robot is not None:  # never answered automatically (gateway.acks)
        info["no_auto_answer"] = robot
    if mail.reply_to:
        info["reply_to"] = [address for _, address in mail.reply_to]
    if content_ids:  # cid: references in the HTML, by the sha256 of the stored inline part
        info["content_ids"] = content_ids
    if mail.text_from_html:
        info["text_from_html"] = True
    sent_at = mail.date or received_at
    return [inbound_message(
        record, connector_type=connector_type, channel=ChannelType.EMAIL, provider_message_id=record.provider_id,
        thread=ThreadRef(message_id=mail.message_id, in_reply_to=mail.in_reply_to, references=mail.references),
        sender=sender, recipients=recipients, subject=mail.subject or None,
        text=visible_reply(mail.text, tuple(settings.reply_languages)), full_text=mail.text, html=mail.html,
        attachments=tuple(stored), sent_at=sent_at, received_at=received_at, extras=info)]
