"""Message trace: find conversations by phone, email, Slack or other scoped id, ticket, conversation or message id,
and follow each message's journey: received, normalised, customer, conversation, CRM writes, sends, statuses and
the errors on the way."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, or_, select

from gateway.cli_customers import _find_ids
from gateway.identity.merges import customer_family
from gateway.storage.tables import (
    conversations,
    crm_links,
    customers,
    dead_letters,
    delivery_log,
    identities,
    inbox,
    messages,
    outbox,
    provider_statuses,
    send_log,
    sends,
)

MAX_CONVERSATIONS = 20
MAX_MESSAGES = 200
_BARE_ID = re.compile(r"[A-Za-z0-9_.-]{4,64}")


@dataclass
class Journey:
    """One message and everything that happened to it."""

    message: Any
    inbox: Any | None
    writes: list[tuple[Any, list[Any]]] = field(default_factory=list)  # outbox row, its delivery log
    send: Any | None = None
    send_log: list[Any] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)
    dead_letters: list[Any] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        found = [f"{d.stage}: {d.error_class} {d.error_code or ''} {d.reason}" for d in self.dead_letters]
        if self.inbox is not None and self.inbox.last_error and self.inbox.status != "done":
            found.append(f"inbox: {self.inbox.last_error}")
        found += [f"{row.crm}: {row.last_error}" for row, _log in self.writes
                  if row.last_error and row.status != "done"]
        if self.send is not None and self.send.last_error and self.send.status != "sent":
            found.append(f"send: {self.send.last_error}")
        found += [f"status {s.status}: error {s.error_code}" for s in self.statuses if s.error_code]
        return found


@dataclass
class ConversationTrace:
    conversation: Any
    customer: Any
    tickets: dict[str, str]
    journeys: list[Journey]


@dataclass
class Trace:
    query: str
    conversations: list[ConversationTrace]
    unprocessed: list[Any]  # inbox rows found by provider id that made no message (yet)


def _conversation_ids(conn: Connection, query: str, region: str) -> list[str]:
    ids: list[str] = []
    customer_ids = _find_ids(conn, query, region)
    if _BARE_ID.fullmatch(query):  # a Slack user id, a page-scoped id: stored as scope:id
        customer_ids += list(conn.execute(select(identities.c.customer_id).where(
            identities.c.value.like(f"%:{_escape(query)}", escape="\\")).limit(20)).scalars())
    family = [member for cid in dict.fromkeys(customer_ids) for member in customer_family(conn, cid)]
    if family:
        ids += conn.execute(select(conversations.c.id).where(conversations.c.customer_id.in_(family))
                            .order_by(conversations.c.last_activity_at.desc()).limit(MAX_CONVERSATIONS)).scalars()
    ids += conn.execute(select(crm_links.c.local_id).where(
        crm_links.c.entity == "conversation", crm_links.c.remote_id == query)).scalars()
    ids += conn.execute(select(conversations.c.id).where(conversations.c.id == query)).scalars()
    ids += conn.execute(select(messages.c.conversation_id).where(
        or_(messages.c.id == query, messages.c.provider_message_id == query))).scalars()
    return list(dict.fromkeys(ids))[:MAX_CONVERSATIONS]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def trace(conn: Connection, query: str, region: str) -> Trace:
    query = query.strip()
    if not query:
        return Trace(query, [], [])
    found = [_conversation(conn, cid) for cid in _conversation_ids(conn, query, region)]
    unprocessed = list(conn.execute(select(
        inbox.c.id, inbox.c.connector, inbox.c.provider_id, inbox.c.received_at, inbox.c.status, inbox.c.attempts,
        inbox.c.last_error).where(inbox.c.provider_id == query, inbox.c.id.not_in(select(messages.c.inbox_id)))))
    return Trace(query, [c for c in found if c is not None], unprocessed)


def _conversation(conn: Connection, conversation_id: str) -> ConversationTrace | None:
    conversation = conn.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
    if conversation is None:
        return None
    customer = conn.execute(select(customers).where(customers.c.id == conversation.customer_id)).first()
    tickets = dict(conn.execute(select(crm_links.c.crm, crm_links.c.remote_id).where(
        crm_links.c.entity == "conversation", crm_links.c.local_id == conversation_id)).all())
    rows = list(conn.execute(select(messages).where(messages.c.conversation_id == conversation_id)
                             .order_by(messages.c.received_at, messages.c.created_at).limit(MAX_MESSAGES)))
    return ConversationTrace(conversation, customer, tickets, journeys(conn, rows))


def journeys(conn: Connection, rows: list[Any]) -> list[Journey]:
    """Each message's journey, read with one query per table."""
    ids = [row.id for row in rows]
    inbox_rows = {r.id: r for r in conn.execute(select(
        inbox.c.id, inbox.c.connector, inbox.c.provider_id, inbox.c.kind, inbox.c.received_at, inbox.c.status,
        inbox.c.attempts, inbox.c.last_error, inbox.c.processed_at).where(inbox.c.id.in_([r.inbox_id for r in rows])))}
    writes = list(conn.execute(select(outbox.c.id, outbox.c.crm, outbox.c.message_id, outbox.c.status,
                                      outbox.c.attempts, outbox.c.last_error, outbox.c.created_at,
                                      outbox.c.delivered_at).where(outbox.c.message_id.in_(ids))))
    logs: dict[int, list[Any]] = {}
    for entry in conn.execute(select(delivery_log).where(delivery_log.c.outbox_id.in_([w.id for w in writes]))
                              .order_by(delivery_log.c.id)):
        logs.setdefault(entry.outbox_id, []).append(entry)
    send_rows = {s.message_id: s for s in conn.execute(select(sends).where(sends.c.message_id.in_(ids)))}
    send_logs: dict[int, list[Any]] = {}
    for entry in conn.execute(select(send_log).where(send_log.c.send_id.in_([s.id for s in send_rows.values()]))
                              .order_by(send_log.c.id)):
        send_logs.setdefault(entry.send_id, []).append(entry)
    provider_ids = [s.provider_message_id for s in send_rows.values() if s.provider_message_id]
    statuses: dict[str, list[Any]] = {}
    for status in conn.execute(select(provider_statuses).where(
            provider_statuses.c.provider_message_id.in_(provider_ids)).order_by(provider_statuses.c.occurred_at)):
        statuses.setdefault(status.provider_message_id, []).append(status)
    sources = [("pipeline", r.inbox_id) for r in rows] + [("delivery", w.id) for w in writes] + \
        [("send", s.id) for s in send_rows.values()]
    letters: dict[tuple[str, int], list[Any]] = {}
    if sources:
        for letter in conn.execute(select(dead_letters).where(or_(*[
                (dead_letters.c.stage == stage) & (dead_letters.c.source_id == source) for stage, source in sources]))
                .order_by(dead_letters.c.id)):
            letters.setdefault((letter.stage, letter.source_id), []).append(letter)
    out = []
    for row in rows:
        own = [w for w in writes if w.message_id == row.id]
        send = send_rows.get(row.id)
        journey = Journey(row, inbox_rows.get(row.inbox_id), [(w, logs.get(w.id, [])) for w in own], send)
        journey.dead_letters = letters.get(("pipeline", row.inbox_id), []) + [
            letter for w in own for letter in letters.get(("delivery", w.id), [])]
        if send is not None:
            journey.send_log = send_logs.get(send.id, [])
            journey.statuses = [s for s in statuses.get(send.provider_message_id or "", [])
                                if s.connector == send.channel]
            journey.dead_letters += letters.get(("send", send.id), [])
        out.append(journey)
    return out
