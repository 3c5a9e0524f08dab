"""Threading: which conversation a message belongs to.

Rules, in order: a thread key the channel gave (email Message-IDs, provider thread ids) that is already known;
then a subject token such as ``[#1234]`` naming a CRM ticket, only when the sender belongs to that ticket's customer
(``subject_token``; a forward from an agent does not qualify); then continuity: the customer's open conversation
with activity inside the window (any channel with ``same_ticket``, the same connector with ``per_channel``); else
a new conversation. The rule that decided is recorded on the message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.config import ConversationsConfig
from gateway.identity.merges import customer_family
from gateway.kpis import SWITCHES_AFTER_INBOUND
from gateway.model import ChannelType, Message, new_id
from gateway.storage.db import is_sqlite
from gateway.storage.prepared import Prepared
from gateway.storage.tables import conversations, crm_links, customers, thread_keys

MAX_KEY = 512  # thread_keys.key
# every key a message looks up, read in one statement; the caller keeps the keys' order of priority
_BY_THREAD_KEYS = Prepared(select(thread_keys.c.key, thread_keys.c.conversation_id).where(
    thread_keys.c.key.in_(bindparam("keys", expanding=True))))
# the customer and every customer merged into it, directly or through others (``customer_family``), inside the
# statements that need it, so the usual customer (nobody merged into it) costs no look-up of its own
_ONE = select(customers.c.id).where(customers.c.id == bindparam("customer_id")).cte("family", recursive=True)
_FAMILY = _ONE.union_all(select(customers.c.id).where(customers.c.merged_into == _ONE.c.id))
_OPEN_IN_FAMILY_QUERY = (select(conversations.c.id)
                         .where(conversations.c.customer_id.in_(select(_FAMILY.c.id)), conversations.c.status == "open",
                                conversations.c.last_activity_at >= bindparam("since"))
                         .order_by(conversations.c.last_activity_at.desc()).limit(1))
_LATEST_IN_FAMILY_QUERY = (select(conversations.c.id).where(conversations.c.customer_id.in_(select(_FAMILY.c.id)))
                           .order_by(conversations.c.last_activity_at.desc()).limit(1))
_LATEST_IN_FAMILY = Prepared(_LATEST_IN_FAMILY_QUERY)
# continuity's conversation and, for when there is none, the latest one, which a new conversation follows
# (``previous_id``): one statement, by ``conversations.continuity``
_CONTINUED_OR_LATEST = {
    "same_ticket": Prepared(select(_OPEN_IN_FAMILY_QUERY.scalar_subquery().label("continued"),
                                   _LATEST_IN_FAMILY_QUERY.scalar_subquery().label("latest"))),
    "per_channel": Prepared(select(
        _OPEN_IN_FAMILY_QUERY.where(conversations.c.connector == bindparam("connector")).scalar_subquery()
        .label("continued"), _LATEST_IN_FAMILY_QUERY.scalar_subquery().label("latest")))}
# two workers threading messages of one customer at once would each open a conversation: the second waits here for
# the first to commit (SQLite's single writer already serialises them)
_LOCK_CUSTOMER = Prepared(select(customers.c.id).where(customers.c.id == bindparam("customer_id")).with_for_update())
_AT = bindparam("at", type_=conversations.c.last_activity_at.type)
_LANGUAGE = bindparam("first_language", type_=conversations.c.language.type)
# a customer's message on a conversation it continues: the activity moved forward, the language set if it had
# none, a channel switch counted (gateway.kpis), in one statement
_TOUCH = Prepared(update(conversations).where(conversations.c.id == bindparam("conversation_id")).values(
    last_activity_at=case((conversations.c.last_activity_at < _AT, _AT), else_=conversations.c.last_activity_at),
    language=func.coalesce(conversations.c.language, _LANGUAGE), switches=SWITCHES_AFTER_INBOUND))
_NEW_CONVERSATION = Prepared(conversations.insert())
# the open conversations of several customers' families at once, each row naming the customer asked about
_ROOTS = (select(customers.c.id.label("root"), customers.c.id)
          .where(customers.c.id.in_(bindparam("customer_ids", expanding=True))).cte("families", recursive=True))
_FAMILIES = _ROOTS.union_all(select(_ROOTS.c.root, customers.c.id).where(customers.c.merged_into == _ROOTS.c.id))
_OPEN_IN_FAMILIES = Prepared(
    select(_FAMILIES.c.root, conversations.c.id, conversations.c.last_activity_at, conversations.c.connector)
    .join(_FAMILIES, conversations.c.customer_id == _FAMILIES.c.id)
    .where(conversations.c.status == "open", conversations.c.last_activity_at >= bindparam("since")))
_LOCK_CUSTOMERS = Prepared(select(customers.c.id).where(customers.c.id.in_(bindparam("customer_ids", expanding=True)))
                           .order_by(customers.c.id).with_for_update())
_READ_AHEAD_CHUNK = 256
_ADD_THREAD_KEYS = {  # by whether the engine is SQLite: each dialect's own INSERT ... ON CONFLICT
    True: Prepared(sqlite.insert(thread_keys).on_conflict_do_nothing(index_elements=["key"])),
    False: Prepared(postgresql.insert(thread_keys).on_conflict_do_nothing(index_elements=["key"]))}


def message_thread_keys(message: Message) -> tuple[list[str], list[str]]:
    """(keys to look up, keys this message adds), scoped so different connectors never collide."""
    scope = "email" if message.channel is ChannelType.EMAIL else message.connector  # Message-IDs are global
    lookup: list[str] = []
    if message.thread.in_reply_to:
        lookup.append(f"{scope}:mid:{message.thread.in_reply_to}")
    lookup += [f"{scope}:mid:{ref}" for ref in reversed(message.thread.references)]
    own: list[str] = []
    if message.thread.message_id:
        own.append(f"{scope}:mid:{message.thread.message_id}")
    if message.thread.provider_thread_id:
        key = f"{scope}:thread:{message.thread.provider_thread_id}"
        lookup.append(key)
        own.append(key)
    if message.channel is ChannelType.EMAIL:
        # mail arrives out of order (a reply fetched before the mail it answers): the ancestors it names are keys of
        # its conversation too, and a mail looks up its own Message-ID, so the late parent joins it (as does the
        # same mail received through a second mailbox); a key already taken keeps its conversation
        own += [key for key in lookup if key not in own]
        lookup += [key for key in own if key not in lookup]
    return [_bounded(key) for key in lookup], [_bounded(key) for key in own]


def _bounded(key: str) -> str:
    """Keys fit the column: an over-long Message-ID keeps its start and a digest of the whole."""
    return key if len(key) <= MAX_KEY else f"{key[:MAX_KEY - 72]}~{hashlib.sha256(key.encode()).hexdigest()}"


def email_thread_key(message_id: str) -> str:
    """The thread key an email's Message-ID (without <>) is known by: a reply naming it joins its conversation."""
    return _bounded(f"email:mid:{message_id.strip().strip('<>')}")


@dataclass
class OpenConversations:
    """The open conversations of a batch's customers (with the customers merged into them) active since the
    earliest continuity window of the batch, read ahead (``read_open_conversations``) and kept up to date as the
    batch threads its messages, so that continuity reads nothing per message. On PostgreSQL the customers are
    locked first, as each message's threading would lock its own."""

    since: datetime
    customers: set[str] = field(default_factory=set)  # whose conversations were read
    # conversation id -> [the customer read about, last activity, connector]
    conversations: dict[str, list[Any]] = field(default_factory=dict)
    of_customer: dict[str, list[str]] = field(default_factory=dict)  # customer -> its conversation ids

    def latest(self, customer_id: str, since: datetime, connector: str | None) -> str | None:
        """The customer's open conversation with the latest activity since ``since`` (on ``connector``)."""
        found: tuple[datetime, str] | None = None
        for conversation_id in self.of_customer.get(customer_id, ()):
            _, last_activity, on = self.conversations[conversation_id]
            if last_activity >= since and (connector is None or on == connector) and (
                    found is None or last_activity > found[0]):
                found = (last_activity, conversation_id)
        return found[1] if found else None

    def add(self, customer_id: str, conversation_id: str, last_activity: datetime, connector: str) -> None:
        self.conversations[conversation_id] = [customer_id, last_activity, connector]
        self.of_customer.setdefault(customer_id, []).append(conversation_id)

    def opened(self, customer_id: str, conversation_id: str, at: datetime, connector: str) -> None:
        if customer_id in self.customers:
            self.add(customer_id, conversation_id, at, connector)

    def touched(self, conversation_id: str, at: datetime, rule: str) -> None:
        """A message continued the conversation. One not read ahead that a thread key or a subject token found may
        belong to any customer, so everything is read again; one continued by a customer not read ahead belongs
        to that customer's family, which shares nothing with the families read."""
        known = self.conversations.get(conversation_id)
        if known is not None:
            known[1] = max(known[1], at)
        elif rule != "continuity":
            self.clear()

    def clear(self) -> None:
        self.customers.clear()
        self.conversations.clear()
        self.of_customer.clear()


def read_open_conversations(conn: Connection, customer_ids: list[str], since: datetime) -> OpenConversations:
    """``OpenConversations`` of ``customer_ids`` (customers no merge replaced), active since ``since``."""
    known = OpenConversations(since)
    for start in range(0, len(customer_ids), _READ_AHEAD_CHUNK):
        chunk = customer_ids[start:start + _READ_AHEAD_CHUNK]
        if not is_sqlite(conn.engine):
            _LOCK_CUSTOMERS.execute(conn, {"customer_ids": chunk})
        for root, conversation_id, last_activity, connector in _OPEN_IN_FAMILIES.all(
                conn, {"customer_ids": chunk, "since": since}):
            known.add(root, conversation_id, last_activity, connector)
        known.customers.update(chunk)
    return known


@dataclass(frozen=True)
class Assignment:
    conversation_id: str
    rule: str  # thread_key | subject_token | continuity | new
    opened: bool
    previous_id: str | None = None


def assign_conversation(conn: Connection, message: Message, customer_id: str, settings: ConversationsConfig,
                        known: OpenConversations | None = None, *, new_customer: bool = False) -> Assignment:
    """Thread a message; times come from the message, so a backfill of old mail threads as it happened.

    ``known``: the batch's open conversations read ahead; kept up to date here. ``new_customer``: the customer was
    created in this transaction, so it has no conversation and nobody else can see it yet: only thread keys are
    looked up."""
    read_ahead = known is not None and customer_id in known.customers
    lookup, own = message_thread_keys(message)
    at = message.received_at
    by_key = known_thread_keys(conn, lookup)
    conversation_id = next((by_key[key] for key in lookup if by_key.get(key)), None)
    rule = "new" if conversation_id is None else "thread_key"
    if not is_sqlite(conn.engine) and not (read_ahead or new_customer):
        _LOCK_CUSTOMER.execute(conn, {"customer_id": customer_id})
    if conversation_id is None and settings.subject_token and message.subject and not new_customer:
        conversation_id = _by_subject_token(conn, message.subject, settings.subject_token,
                                            customer_family(conn, customer_id))
        if conversation_id:
            rule = "subject_token"
    latest_id = None
    if conversation_id is None and not new_customer:
        since = at - timedelta(hours=settings.window_hours)
        if known is not None and read_ahead:  # read since the batch's earliest window, so since this one
            per_channel = settings.continuity == "per_channel"
            conversation_id = known.latest(customer_id, since, message.connector if per_channel else None)
            if conversation_id is None:
                latest_id = _LATEST_IN_FAMILY.scalar(conn, {"customer_id": customer_id})
        else:
            conversation_id, latest_id = _CONTINUED_OR_LATEST[settings.continuity].first(conn, {
                "customer_id": customer_id, "since": since, "connector": message.connector})
        if conversation_id:
            rule = "continuity"
    previous_id = None
    opened = conversation_id is None
    if conversation_id is None:
        conversation_id = new_id()
        previous_id = latest_id
        _NEW_CONVERSATION.execute(conn, {
            "id": conversation_id, "customer_id": customer_id, "channel": message.channel.value,
            "previous_id": previous_id, "connector": message.connector, "status": "open", "created_at": at,
            "last_activity_at": at, "language": _language(message)})
        if known is not None:
            known.opened(customer_id, conversation_id, at, message.connector)
    else:
        _TOUCH.execute(conn, {"conversation_id": conversation_id, "at": at, "first_language": _language(message),
                              "inbound_connector": message.connector})
        if known is not None:
            known.touched(conversation_id, at, rule)
    new_keys = [key for key in own if key not in by_key]  # a key already taken keeps its conversation
    if new_keys:
        _ADD_THREAD_KEYS[is_sqlite(conn.engine)].execute_many(
            conn, [{"key": key, "conversation_id": conversation_id} for key in new_keys])
    return Assignment(conversation_id, rule, opened, previous_id)


def known_thread_keys(conn: Connection, keys: list[str]) -> dict[str, str]:
    """The conversation of each of ``keys`` already known, in one statement (none for no keys)."""
    if not keys:
        return {}
    return dict(_BY_THREAD_KEYS.all(conn, {"keys": list(dict.fromkeys(keys))}))


def _language(message: Message) -> str | None:
    """The conversation's language for the KPIs: the first detected one ('und' says nothing)."""
    return message.language[:16] if message.language and message.language != "und" else None


def _by_subject_token(conn: Connection, subject: str, pattern: str, family: list[str]) -> str | None:
    """The conversation whose CRM ticket the subject names, if it belongs to this sender's customer."""
    match = re.search(pattern, subject)
    if match is None:
        return None
    return conn.execute(
        select(conversations.c.id).join(crm_links, (crm_links.c.entity == "conversation")
                                        & (crm_links.c.local_id == conversations.c.id))
        .where(crm_links.c.remote_id == match.group(1), conversations.c.customer_id.in_(family))
        .order_by(conversations.c.last_activity_at.desc()).limit(1)).scalar_one_or_none()


def close_conversation(conn: Connection, conversation_id: str) -> None:
    conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(status="closed"))


