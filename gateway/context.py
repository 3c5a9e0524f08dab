"""What mappings and CRM connectors see of a stored message: its customer, its conversation, its outbox item.

The pipeline worker builds these while it stores a message (to render each route's mapped fields); the delivery
worker builds them again from the stored rows when it hands an outbox row to a CRM connector, and renders the fields
of a row replayed after a mapping error. Both build them here, so the two views cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import NoResultFound

from gateway.identity.merges import live_customer_id
from gateway.model import Message
from gateway.plugins import ConversationView, CustomerView, DeliveryItem
from gateway.routing import NO_ROUTE
from gateway.storage.prepared import Prepared
from gateway.storage.tables import conversations, customers, identities, messages

_CUSTOMER_WITH_IDENTIFIERS = Prepared(
    select(customers.c.merged_into, customers.c.display_name, identities.c.kind, identities.c.value)
    .outerjoin(identities, identities.c.customer_id == customers.c.id)
    .where(customers.c.id == bindparam("id")).order_by(identities.c.id))


def customer_context(conn: Connection, customer_id: str) -> dict[str, Any]:
    """The customer as mappings and CRM connectors see it (the live customer, if it was merged since)."""
    rows = _CUSTOMER_WITH_IDENTIFIERS.all(conn, {"id": customer_id})
    if not rows:
        raise NoResultFound(f"customer {customer_id}")
    if rows[0].merged_into:
        customer_id = live_customer_id(conn, customer_id)
        rows = _CUSTOMER_WITH_IDENTIFIERS.all(conn, {"id": customer_id})
    return {"id": customer_id, "display_name": rows[0].display_name,
            "identifiers": [{"kind": row.kind, "value": row.value} for row in rows if row.kind is not None]}


_CUSTOMERS_WITH_IDENTIFIERS = Prepared(
    select(customers.c.id, customers.c.display_name, identities.c.kind, identities.c.value)
    .outerjoin(identities, identities.c.customer_id == customers.c.id)
    .where(customers.c.id.in_(bindparam("ids", expanding=True)), customers.c.merged_into.is_(None))
    .order_by(customers.c.id, identities.c.id))
_CONTEXTS_CHUNK = 256


def customer_contexts(conn: Connection, customer_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``customer_context`` of each of ``customer_ids`` that no merge replaced, in a statement per 256."""
    contexts: dict[str, dict[str, Any]] = {}
    for start in range(0, len(customer_ids), _CONTEXTS_CHUNK):
        for customer_id, name, kind, value in _CUSTOMERS_WITH_IDENTIFIERS.all(
                conn, {"ids": customer_ids[start:start + _CONTEXTS_CHUNK]}):
            context = contexts.setdefault(customer_id, {"id": customer_id, "display_name": name, "identifiers": []})
            if kind is not None:
                context["identifiers"].append({"kind": kind, "value": value})
    return contexts


def new_customer_context(customer_id: str, display_name: str | None,
                         identifiers: list[tuple[str, str]]) -> dict[str, Any]:
    """``customer_context`` of a customer created in this transaction, from what created it (nothing to read)."""
    return {"id": customer_id, "display_name": display_name,
            "identifiers": [{"kind": kind, "value": value} for kind, value in identifiers]}


def conversation_context(conversation_id: str, channel: str, thread_rule: str | None, *, opened_by_message: bool,
                         previous_id: str | None) -> dict[str, Any]:
    """The conversation as mappings see it: the threading rule that placed the message, whether the message opened
    the conversation, and the conversation it continues after the previous one ended (if any)."""
    return {"id": conversation_id, "channel": channel, "thread_rule": thread_rule,
            "opened_by_message": opened_by_message, "previous_id": previous_id}


def mapping_context(message: Message, customer: dict[str, Any], conversation: dict[str, Any],
                    route: dict[str, Any] | None = None, message_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The variables a mapping renders with: ``message``, ``customer``, ``conversation`` and ``route``.

    ``message_data`` is ``message.model_dump(mode="json")`` when the caller has it already."""
    return {"message": message.model_dump(mode="json") if message_data is None else message_data,
            "customer": customer, "conversation": conversation, "route": route or NO_ROUTE}


def idempotency_key(crm: str, message_id: str) -> str:
    """The key a CRM connector writes a message under: the same for every attempt at the same CRM instance."""
    return f"gw-{crm}-{message_id}"


@dataclass(frozen=True)
class MessageContext:
    """A message with its customer and conversation, as the dictionaries mappings render with."""

    message: Message
    customer: dict[str, Any]
    conversation: dict[str, Any]
    route: dict[str, Any] | None = None  # gateway.routing: the routes that took the message to this CRM
    message_data: dict[str, Any] | None = None  # the message's JSON dump, when its row was just written with it

    def for_mapping(self) -> dict[str, Any]:
        """The mapping variables of this message."""
        return mapping_context(self.message, self.customer, self.conversation, self.route, self.message_data)

    def identifiers(self) -> list[tuple[str, str]]:
        """The customer's identifiers as (kind, value)."""
        return [(i["kind"], i["value"]) for i in self.customer["identifiers"]]


_STORED = select(messages).where(messages.c.id == bindparam("id"))
_PREVIOUS = select(conversations.c.previous_id).where(conversations.c.id == bindparam("id"))


def stored_message_context(conn: Connection, message_id: str) -> MessageContext:
    """The context of a stored message, read back from its row (its customer as it is now, after any merge)."""
    stored = conn.execute(_STORED, {"id": message_id}).one()
    customer = customer_context(conn, stored.customer_id)
    previous_id = conn.execute(_PREVIOUS, {"id": stored.conversation_id}).scalar_one_or_none()
    message = Message.model_validate(stored.data)
    conversation = conversation_context(stored.conversation_id, message.channel.value, stored.thread_rule,
                                        opened_by_message=stored.thread_rule == "new", previous_id=previous_id)
    return MessageContext(message, customer, conversation)


def delivery_item(context: MessageContext, *, crm: str, outbox_id: int, attempt: int,
                  fields: Mapping[str, Any], certain_failures: int = 0) -> DeliveryItem:
    """One outbox row as a CRM connector sees it: the message, typed views of its customer and conversation, and
    the fields its mapping rendered."""
    customer, conversation = context.customer, context.conversation
    return DeliveryItem(
        outbox_id=outbox_id, attempt=attempt, idempotency_key=idempotency_key(crm, context.message.id),
        message=context.message,
        customer=CustomerView(customer["id"], customer["display_name"],
                              tuple((i["kind"], i["value"]) for i in customer["identifiers"])),
        conversation=ConversationView(conversation["id"], conversation["channel"],
                                      conversation["opened_by_message"], conversation["previous_id"]),
        fields=fields, certain_failures=certain_failures)
