"""Storing what the pipeline made of its inbox rows: messages with their customer, conversation and outbox rows,
provider statuses, and a CRM's replies, in one transaction per batch.

A batch is stored without a savepoint per row. Should any row fail (or its lease be lost), the transaction is rolled
back and the batch stored again with each row in a savepoint of its own (``store_row_by_row``): a row failing then is
rolled back alone and the worker retries it by itself (``store_one``). Rows are settled in the same transaction as
their writes, and only while this worker still holds them, so a crash anywhere repeats a row and never half-applies
it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.exc import IntegrityError

from gateway import metrics, routing
from gateway.acks import Acknowledgements
from gateway.calendars import build_calendars
from gateway.context import (
    MessageContext,
    conversation_context,
    customer_context,
    customer_contexts,
    new_customer_context,
)
from gateway.conversations import OpenConversations, assign_conversation, read_open_conversations
from gateway.escalation import start_clocks, stop_clocks
from gateway.identity import resolve_customer, rules_from_config
from gateway.identity.resolve import KnownIdentifiers, read_identifiers
from gateway.identity.suggest import suggest_for_new_customer
from gateway.kpis import KpiClock, record_first_replies, record_solved
from gateway.mapping import MappingRenderError
from gateway.model import Message, StatusUpdate
from gateway.notes import note_failed_send
from gateway.optouts import record_keyword
from gateway.ordering import OrderKeys, forget_keys, must_wait
from gateway.plugins import AgentReply, TicketStatus
from gateway.replies import ReplyIntake
from gateway.runtime import Runtime
from gateway.sensitive import Masker
from gateway.storage.db import utcnow
from gateway.storage.prepared import Prepared as Statement
from gateway.storage.queues import LeaseLost, insert_for
from gateway.storage.tables import inbox, messages, outbox, provider_statuses
from gateway.surveys import ask, take_answer

log = logging.getLogger(__name__)
FAILED_STATUSES = frozenset({"failed", "undelivered"})

_ALREADY_STORED = Statement(select(messages.c.id).where(
    messages.c.connector == bindparam("connector"), messages.c.provider_message_id == bindparam("provider_message_id")))
_INSERT_MESSAGE = Statement(messages.insert())
_INSERT_OUTBOX = Statement(outbox.insert())
_INSERT_OUTBOX_RETURNING_ID = Statement(outbox.insert().returning(outbox.c.id))  # for a dead letter to name it
_ALREADY_STORED_OF = Statement(select(messages.c.provider_message_id).where(
    messages.c.connector == bindparam("connector"),
    messages.c.provider_message_id.in_(bindparam("provider_message_ids", expanding=True))))
_SETTLE_ALL_HELD = Statement(inbox.update().where(
    inbox.c.id.in_(bindparam("row_ids", expanding=True)), inbox.c.lease_owner == bindparam("owner"),
    inbox.c.status == "pending"
).values(status=bindparam("to"), lease_owner=None, lease_until=None, processed_at=bindparam("at"), last_error=None))
_SETTLE_HELD = Statement(inbox.update().where(
    inbox.c.id == bindparam("row_id"), inbox.c.lease_owner == bindparam("owner"), inbox.c.status == "pending"
).values(status=bindparam("to"), lease_owner=None, lease_until=None, processed_at=bindparam("at"), last_error=None))



@dataclass(frozen=True, eq=False)
class Prepared:
    """An inbox row with what its connector made of it, ready to store."""

    row: Row[Any]
    messages: list[Message]
    statuses: list[StatusUpdate]
    replies: list[AgentReply] = field(default_factory=list)
    crm: str | None = None  # set for a CRM's reply event
    keys: OrderKeys = frozenset()  # see gateway.ordering
    solved: list[TicketStatus] = field(default_factory=list)  # a CRM's ticket status events (surveys)

    @property
    def outcome(self) -> str:
        if self.crm is not None:
            return "reply" if self.replies else ("ticket_status" if self.solved else "ignored")
        return "message" if self.messages else ("status" if self.statuses else "ignored")


@dataclass(eq=False)
class _Batch:
    """What storing rows in one transaction gathers: in a batch stored as a whole (not ``alone``), the messages
    stored or found stored and the rows to settle at its end; and the dead letters to count once committed."""

    alone: bool = False  # each row settled as it is stored, each customer resolved in a savepoint
    stored: set[tuple[str, str]] = field(default_factory=set)  # (connector, provider message id)
    settled: dict[str, list[int]] = field(default_factory=dict)  # inbox row ids by their new status
    dead_letters: list[str] = field(default_factory=list)  # the CRM of each outbox row dead-lettered
    known: KnownIdentifiers | None = None  # the senders' identifiers, read ahead for the batch
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # their customers' contexts, read ahead
    conversations: OpenConversations | None = None  # those customers' open conversations, read ahead
    outbox_rows: list[dict[str, Any]] = field(default_factory=list)  # inserted together (``_write_outbox``)

    def count_dead_letters(self) -> None:
        for crm in self.dead_letters:
            metrics.DEAD_LETTERED.labels("delivery", crm).inc()


def _already_stored(conn: Connection, batch: list[Message]) -> set[tuple[str, str]]:
    """Which of a batch's messages are stored already (a provider's retry), one query per connector."""
    by_connector: dict[str, list[str]] = {}
    for message in batch:
        by_connector.setdefault(message.connector, []).append(message.provider_message_id)
    return {(connector, provider_message_id) for connector, ids in by_connector.items()
            for provider_message_id in _ALREADY_STORED_OF.scalars(conn, {
                "connector": connector, "provider_message_ids": ids})}



class MessageStore:
    """Writes prepared rows for one worker (``owner``): it settles only the inbox rows that worker holds."""

    def __init__(self, runtime: Runtime, owner: str, replies: ReplyIntake) -> None:
        self.rt = runtime
        self.owner = owner
        self.replies = replies
        settings = runtime.config.settings
        self.rules = rules_from_config(settings.identity)
        self._maskers: tuple[object, dict[str, Masker]] = (None, {})
        self.acks = Acknowledgements(runtime.config, runtime.channels)
        self.escalations, self.surveys = settings.escalations, settings.surveys
        self.calendars = build_calendars(settings.business_hours)
        self.kpi_clock = KpiClock(settings.kpis, self.calendars)

    def store_batch(self, prepared: list[Prepared]) -> list[Prepared] | None:
        """The batch stored in one transaction without savepoints; the rows that wait for an older row of their
        sender. None when anything failed: the transaction was rolled back and nothing of the batch is stored."""
        if not prepared:
            return []
        batch = _Batch()
        try:
            with self.rt.engine.begin() as conn:
                behind = must_wait(conn, [(item.row.id, item.keys) for item in prepared])
                ready = [item for item in prepared if item.row.id not in behind]
                batch.stored = _already_stored(conn, [m for item in ready for m in item.messages])
                self._read_ahead(conn, batch, [m for item in ready for m in item.messages
                                               if (m.connector, m.provider_message_id) not in batch.stored])
                for item in ready:
                    self.store_row(conn, item, batch)
                self._write_outbox(conn, batch)
                self._settle(conn, batch.settled)
        except Exception:
            log.info("a batch of %d inbox rows failed as a whole; storing its rows one by one", len(prepared),
                     exc_info=True)
            return None
        batch.count_dead_letters()
        return [item for item in prepared if item.row.id in behind]

    def store_row_by_row(self, prepared: list[Prepared]) -> tuple[list[Prepared], list[Prepared], list[Prepared]]:
        """The batch in one transaction, each row in a savepoint of its own: (waiting, failed, lost) rows."""
        failed: list[Prepared] = []
        lost: list[Prepared] = []
        waiting: list[Prepared] = []
        dead_letters: list[str] = []
        try:
            with self.rt.engine.begin() as conn:
                behind = must_wait(conn, [(item.row.id, item.keys) for item in prepared])
                waiting = [item for item in prepared if item.row.id in behind]
                for item in prepared:
                    if item.row.id in behind:
                        continue
                    batch = _Batch(alone=True)
                    try:
                        with conn.begin_nested():
                            self.store_row(conn, item, batch)
                    except LeaseLost:
                        lost.append(item)
                    except Exception:
                        failed.append(item)
                    else:
                        dead_letters += batch.dead_letters
        except Exception:
            # the commit itself failed: nothing of the batch was stored
            return waiting, [item for item in prepared if item not in waiting], []
        _Batch(dead_letters=dead_letters).count_dead_letters()
        return waiting, failed, lost

    def _read_ahead(self, conn: Connection, batch: _Batch, to_store: list[Message]) -> None:
        """Read what resolving, threading and rendering each message would read, for all of them at once: their
        senders' identifiers and owners, those customers' contexts and open conversations (three statements for up
        to 64 senders, instead of three per message). A message alone reads its own as before."""
        if len(to_store) < 2:
            return
        batch.known = read_identifiers(conn, [message.sender for message in to_store], self.rules)
        owners = sorted({owner[0] for owner in batch.known.owners.values() if owner[1] is None})
        batch.customers = customer_contexts(conn, owners)
        window = timedelta(hours=self.rt.config.settings.conversations.window_hours)
        batch.conversations = read_open_conversations(
            conn, owners, min(message.received_at for message in to_store) - window)

    def store_one(self, item: Prepared) -> _Batch | None:
        """One row in a transaction of its own; None when it waits for an older row of its sender (nothing stored).

        Raises what storing raised: ``LeaseLost`` when this worker no longer holds the row."""
        batch = _Batch(alone=True)
        with self.rt.engine.begin() as conn:
            if must_wait(conn, [(item.row.id, item.keys)]):
                return None
            self.store_row(conn, item, batch)
        return batch

    def store_row(self, conn: Connection, item: Prepared, batch: _Batch) -> None:
        if item.crm is not None:
            outcome = self.replies.store(conn, item.crm, item.row.id, item.replies)
            stop_clocks(conn, item.replies)
            asked = ask(conn, self.surveys, self.rt.channels, item.crm, item.row.id, item.solved)
            record_first_replies(conn, (reply.conversation_id for reply in item.replies), self.kpi_clock)
            record_solved(conn, item.solved, self.kpi_clock)
            self._finish(conn, item.row, "done" if outcome.queued or asked else "ignored", batch)
            return
        for message in item.messages:
            self._store(conn, message, batch)
        for update in item.statuses:
            self._store_status(conn, update, item.row.id)
        self._finish(conn, item.row, "done" if item.messages or item.statuses else "ignored", batch)

    def _finish(self, conn: Connection, row: Row[Any], status: str, batch: _Batch) -> None:
        """Settle a row this worker still holds; else ``LeaseLost`` rolls back what was stored for it.

        In a batch stored as a whole, the rows are settled together at its end (``_settle``)."""
        if not batch.alone:
            batch.settled.setdefault(status, []).append(row.id)
            return
        if not _SETTLE_HELD.execute(conn, {"row_id": row.id, "owner": self.owner, "to": status,
                                           "at": utcnow()}).rowcount:
            raise LeaseLost(f"inbox row {row.id}")
        forget_keys(conn, [row.id])

    def _settle(self, conn: Connection, settled: dict[str, list[int]]) -> None:
        """Settle a batch's rows, one statement per outcome; ``LeaseLost`` when this worker lost any of them."""
        now = utcnow()
        for status, row_ids in settled.items():
            count = _SETTLE_ALL_HELD.execute(conn, {"row_ids": row_ids, "owner": self.owner, "to": status,
                                                    "at": now}).rowcount
            if count != len(row_ids):
                raise LeaseLost(f"{len(row_ids) - count} of inbox rows {row_ids}")
        forget_keys(conn, [row_id for row_ids in settled.values() for row_id in row_ids])


    @staticmethod
    def _write_outbox(conn: Connection, batch: _Batch) -> None:
        """The batch's outbox rows not inserted yet, in one executemany, in the order their messages came."""
        if batch.outbox_rows:
            _INSERT_OUTBOX.execute_many(conn, batch.outbox_rows)
            batch.outbox_rows.clear()

    def _store_status(self, conn: Connection, update: StatusUpdate, inbox_id: int) -> None:
        statement = insert_for(conn.engine, provider_statuses).on_conflict_do_nothing(
            index_elements=["connector", "provider_message_id", "status"])
        conn.execute(statement, {
            "connector": update.connector, "provider_message_id": update.provider_message_id,
            "status": update.status, "error_code": update.error_code, "occurred_at": update.occurred_at,
            "extras": update.extras, "inbox_id": inbox_id})
        if update.status in FAILED_STATUSES:
            note_failed_send(conn, update)


    @property
    def maskers(self) -> dict[str, Masker]:
        """Each channel's masker, built again when a reload (``gateway.reload``) brought new routes."""
        config = self.rt.config
        if self._maskers[0] is not config:
            self._maskers = (config, {name: config.masker_for(name) for name in config.channels})
        return self._maskers[1]

    def _store(self, conn: Connection, message: Message, batch: _Batch) -> None:
        if message.connector in self.maskers:  # card numbers and the like never reach storage or a CRM
            message = self.maskers[message.connector].message(message)
        if batch.alone:
            if _ALREADY_STORED.first(conn, {"connector": message.connector,
                                            "provider_message_id": message.provider_message_id}):
                return
        elif (message.connector, message.provider_message_id) in batch.stored:
            return
        if batch.alone:
            try:
                with conn.begin_nested():
                    resolution = resolve_customer(conn, message.sender, message_id=message.id, rules=self.rules)
            except IntegrityError:
                # another worker added the same identifier a moment ago: its row is visible now
                resolution = resolve_customer(conn, message.sender, message_id=message.id, rules=self.rules)
        else:  # an IntegrityError fails the whole batch, which is then stored row by row, this way
            resolution = resolve_customer(conn, message.sender, message_id=message.id, rules=self.rules,
                                          known=batch.known)
        customer_id = resolution.customer_id
        if resolution.wrote:  # its context changed (a merged customer is never resolved to again)
            batch.customers.pop(customer_id, None)
        if resolution.merges and batch.conversations is not None:  # a family grew
            batch.conversations.clear()
        if resolution.created:
            suggest_for_new_customer(conn, customer_id, self.rt.config.settings.identity.suggestion_min_score)
        assignment = assign_conversation(conn, message, customer_id, self.rt.config.settings.conversations,
                                         batch.conversations, new_customer=resolution.created)
        conversation_id, rule = assignment.conversation_id, assignment.rule
        now = utcnow()
        data = message.model_dump(mode="json")
        _INSERT_MESSAGE.execute(conn, {
            "id": message.id, "inbox_id": message.raw.inbox_id, "connector": message.connector,
            "provider_message_id": message.provider_message_id, "customer_id": customer_id,
            "conversation_id": conversation_id, "thread_rule": rule, "data": data,
            "received_at": message.received_at, "created_at": now})
        batch.stored.add((message.connector, message.provider_message_id))
        record_keyword(conn, message)
        if take_answer(conn, self.surveys, message, customer_id):
            return  # a survey rating: written back by the worker's automation job, not a new support message
        start_clocks(conn, self.escalations, self.calendars, message, conversation_id)
        customer = (new_customer_context(customer_id, resolution.display_name, resolution.identifiers)
                    if resolution.identifiers is not None else
                    batch.customers.get(customer_id) or customer_context(conn, customer_id))
        context = MessageContext(message, customer, conversation_context(
            conversation_id, message.channel.value, rule, opened_by_message=assignment.opened,
            previous_id=assignment.previous_id), message_data=data)
        earlier = set() if assignment.opened else routing.earlier_crms(
            conn, self.rt.config, message, conversation_id, batch.outbox_rows)
        chosen = routing.choose(self.rt.config, message, context.identifiers(), earlier)
        self.acks.decide(conn, message, customer_id, conversation_id, assignment.opened,
                         {name for route in chosen for name in route.route["names"]})
        for route in chosen:
            fields: dict[str, Any] | None = None
            error: MappingRenderError | None = None
            mapping = self.rt.mappings.get(route.crm)
            if mapping is not None:
                try:
                    fields = mapping.apply(replace(context, route=route.route).for_mapping())
                except MappingRenderError as exc:
                    error = exc
            else:
                fields = {}
            row = {"crm": route.crm, "message_id": message.id, "conversation_id": conversation_id, "fields": fields,
                   "status": "pending", "attempts": 0, "available_at": now, "created_at": now}
            if error is None and not batch.alone:
                batch.outbox_rows.append(row)
            elif error is None:
                _INSERT_OUTBOX.execute(conn, row)
            else:
                self._write_outbox(conn, batch)  # its id follows those of the batch's earlier rows
                outbox_id = _INSERT_OUTBOX_RETURNING_ID.scalar(conn, row)
                self.rt.queues.dead_letter(conn, stage="delivery", source_id=outbox_id, target=route.crm,
                                           error_class="permanent", reason=str(error), attempts=0,
                                           code="mapping_error", field=error.field)
                batch.dead_letters.append(route.crm)
