"""Agent replies from the CRMs: stored events -> canonical outbound messages -> the send queue.

A CRM's reply events (its signed webhook, or what a poll found) are stored in the inbox under ``crm:NAME`` before
they are acknowledged, exactly as channel webhooks are. The pipeline worker hands those rows here: the CRM connector
reads the replies they carry (network, outside any transaction), and each reply becomes an outbound message in the
customer's conversation plus one send, in the worker's transaction. A reply is keyed by the CRM's own id for it, so
the same reply reached by the webhook and by the poll is sent once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, Row, select

from gateway.model import Direction, Identifier, IdentifierKind, Message, Party, RawRef, ThreadRef
from gateway.notes import queue_note
from gateway.plugins import AgentReplies, AgentReply, ReplySender
from gateway.records import RawRecord
from gateway.storage.db import utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import conversations, messages, sends

log = logging.getLogger(__name__)
CRM_PREFIX = "crm:"


def crm_inbox_name(crm: str) -> str:
    """The inbox connector name a CRM's reply events are stored under (never a channel's name)."""
    return CRM_PREFIX + crm


def crm_of(inbox_connector: str) -> str | None:
    return inbox_connector.removeprefix(CRM_PREFIX) if inbox_connector.startswith(CRM_PREFIX) else None


def last_inbound(conn: Connection, conversation_id: str, channel: str | None = None) -> Row | None:  # type: ignore[type-arg]
    """The customer's latest message in a conversation (on one channel, if given): the one a reply answers."""
    query = (select(messages.c.id, messages.c.connector, messages.c.customer_id, messages.c.data,
                    messages.c.received_at)
             .where(messages.c.conversation_id == conversation_id, messages.c.direction == Direction.INBOUND.value)
             .order_by(messages.c.received_at.desc(), messages.c.created_at.desc()).limit(1))
    if channel is not None:
        query = query.where(messages.c.connector == channel)
    return conn.execute(query).first()


@dataclass(frozen=True)
class ReplyOutcome:
    queued: int = 0
    duplicates: int = 0
    refused: int = 0


class ReplyIntake:
    """Turns a CRM's stored reply events into outbound messages and sends."""

    def __init__(self, channels: dict[str, object], crms: dict[str, object]) -> None:
        self.channels = channels
        self.crms = crms

    def read(self, crm_name: str, record: RawRecord, links: object) -> list[AgentReply]:
        """The replies one stored event carries (may call the CRM's API); raises to retry the row later."""
        crm = self.crms.get(crm_name)
        if not isinstance(crm, AgentReplies):
            raise LookupError(f"crm {crm_name!r} is not configured, or does not take agent replies")
        return crm.agent_replies(record, links)  # type: ignore[arg-type]

    def store(self, conn: Connection, crm_name: str, inbox_id: int, replies: list[AgentReply]) -> ReplyOutcome:
        queued = duplicates = refused = 0
        for reply in replies:
            result = self._store_one(conn, crm_name, inbox_id, reply)
            queued += result == "queued"
            duplicates += result == "duplicate"
            refused += result == "refused"
        return ReplyOutcome(queued, duplicates, refused)

    def _store_one(self, conn: Connection, crm_name: str, inbox_id: int, reply: AgentReply) -> str:
        provider_id = f"{crm_name}:{reply.reply_id}"[:255]
        known = conn.execute(select(conversations.c.id).where(conversations.c.id == reply.conversation_id)).first()
        if known is None:
            log.warning("%s: reply %s names unknown conversation %s; not sent", crm_name, reply.reply_id,
                        reply.conversation_id)
            return "refused"
        answered = last_inbound(conn, reply.conversation_id)
        if answered is None:
            queue_note(conn, crm_name, reply.conversation_id, f"reply-{reply.reply_id}-no-customer",
                       "Not sent: this conversation has no message from the customer to answer.")
            return "refused"
        channel = self.channels.get(answered.connector)
        if not isinstance(channel, ReplySender):
            queue_note(conn, crm_name, reply.conversation_id, f"reply-{reply.reply_id}-no-channel",
                       f"Not sent: the customer wrote through {answered.connector!r}, which cannot carry replies "
                       "(channel removed from the configuration, or it has no sending ability).")
            return "refused"
        duplicate = conn.execute(select(messages.c.id).where(
            messages.c.connector == answered.connector, messages.c.provider_message_id == provider_id)).first()
        if duplicate is not None:
            return "duplicate"
        customer_message = Message.model_validate(answered.data)
        now = utcnow()
        outbound = Message(
            channel=customer_message.channel, connector=customer_message.connector,
            connector_type=customer_message.connector_type, direction=Direction.OUTBOUND,
            provider_message_id=provider_id,
            thread=ThreadRef(in_reply_to=customer_message.thread.message_id,
                             provider_thread_id=customer_message.thread.provider_thread_id),
            sender=Party(identifiers=(Identifier(kind=IdentifierKind.AGENT,
                                                 value=f"{crm_name}:{reply.author_id or 'agent'}"[:320]),),
                         display_name=reply.author),
            recipients=(customer_message.sender,), text=reply.text, full_text=reply.text,
            attachments=reply.attachments, sent_at=reply.created_at, received_at=now,
            extras={"crm": crm_name, "reply_id": reply.reply_id, "answers": answered.id},
            raw=RawRef(inbox_id=inbox_id, connector=crm_inbox_name(crm_name)))
        inserted = conn.execute(insert_for(conn.engine, messages).values(
            id=outbound.id, inbox_id=inbox_id, connector=outbound.connector, provider_message_id=provider_id,
            customer_id=answered.customer_id, conversation_id=reply.conversation_id, thread_rule="reply",
            direction=Direction.OUTBOUND.value, data=outbound.model_dump(mode="json"), received_at=now,
            created_at=now).on_conflict_do_nothing(index_elements=["connector", "provider_message_id"])
            .returning(messages.c.id)).first()
        if inserted is None:
            return "duplicate"
        conn.execute(sends.insert().values(
            message_id=outbound.id, channel=outbound.connector, conversation_id=reply.conversation_id,
            crm=crm_name, status="pending", attempts=0, available_at=now, created_at=now))
        return "queued"
