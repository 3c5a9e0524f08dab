"""The stored contexts of a delivery batch: one query per table for the whole batch instead of four per message.

What each message's context holds is what ``gateway.context.stored_message_context`` reads for one message (its
customer as it is now, after any merge; its conversation's predecessor); the delivery worker reads them here for
all the messages it claimed at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select

from gateway.context import MessageContext, conversation_context, customer_context
from gateway.model import Message
from gateway.storage.prepared import Prepared
from gateway.storage.tables import conversations, customers, identities, messages

IDS_PER_QUERY = 500  # well under SQLite's limit of bound parameters per statement

_MESSAGES = Prepared(select(messages.c.id, messages.c.customer_id, messages.c.conversation_id,
                            messages.c.thread_rule, messages.c.data).where(
    messages.c.id.in_(bindparam("ids", expanding=True))))
_CUSTOMERS = Prepared(select(customers.c.id, customers.c.merged_into, customers.c.display_name).where(
    customers.c.id.in_(bindparam("ids", expanding=True))))
_IDENTIFIERS = Prepared(select(identities.c.customer_id, identities.c.kind, identities.c.value).where(
    identities.c.customer_id.in_(bindparam("ids", expanding=True))).order_by(identities.c.id))
_PREVIOUS = Prepared(select(conversations.c.id, conversations.c.previous_id).where(
    conversations.c.id.in_(bindparam("ids", expanding=True))))


class StoredContexts:
    """The stored messages of a batch with their customers and conversations, read on ``conn`` at construction.

    ``context`` builds one message's ``MessageContext`` when asked, so a message that cannot be read back (its
    data no longer a valid ``Message``) fails alone.
    """

    def __init__(self, conn: Connection, message_ids: Sequence[str]) -> None:
        self._messages = {row.id: row for row in _read(conn, _MESSAGES, list(dict.fromkeys(message_ids)))}
        stored_customers = {row.id: row for row in _read(conn, _CUSTOMERS, _distinct(
            row.customer_id for row in self._messages.values()))}
        self._customers: dict[str, dict[str, Any]] = {}
        live = []
        for customer_id, row in stored_customers.items():
            if row.merged_into:  # rare: followed one link at a time, as for a single message
                self._customers[customer_id] = customer_context(conn, customer_id)
            else:
                self._customers[customer_id] = {"id": customer_id, "display_name": row.display_name,
                                                "identifiers": []}
                live.append(customer_id)
        for customer_id, kind, value in _read(conn, _IDENTIFIERS, live):
            self._customers[customer_id]["identifiers"].append({"kind": kind, "value": value})
        self._previous: dict[str, str | None] = dict(_read(conn, _PREVIOUS, _distinct(
            row.conversation_id for row in self._messages.values())))

    def data(self, message_id: str) -> dict[str, Any] | None:
        """The message's stored data (its canonical form as JSON), None when it is not stored."""
        row = self._messages.get(message_id)
        return row.data if row is not None else None

    def context(self, message_id: str) -> MessageContext:
        """The message's context; ``LookupError`` when the message, its customer or conversation is not stored."""
        stored = self._messages.get(message_id)
        if stored is None:
            raise LookupError(f"message {message_id} is not stored")
        if stored.customer_id not in self._customers or stored.conversation_id not in self._previous:
            raise LookupError(f"the customer or conversation of message {message_id} is not stored")
        customer = self._customers[stored.customer_id]
        message = Message.model_validate(stored.data)
        conversation = conversation_context(stored.conversation_id, message.channel.value, stored.thread_rule,
                                            opened_by_message=stored.thread_rule == "new",
                                            previous_id=self._previous[stored.conversation_id])
        own_customer = {**customer, "identifiers": [dict(identifier) for identifier in customer["identifiers"]]}
        return MessageContext(message, own_customer, conversation)


def _distinct(values: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _read(conn: Connection, statement: Prepared, ids: list[str]) -> list[Any]:
    rows: list[Any] = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        rows.extend(statement.all(conn, {"ids": ids[start:start + IDS_PER_QUERY]}))
    return rows
