"""The delivery worker: outbox -> CRM connector -> delivery log, with durable retries and dead letters."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, update

from gateway import metrics
from gateway.acks import Acknowledgements
from gateway.context import delivery_item
from gateway.delivery_contexts import StoredContexts
from gateway.errors import DeliveryError, PermanentError, RetryableError, as_delivery_error
from gateway.logs import withheld
from gateway.mapping import MappingRenderError
from gateway.plugins import DeliveryItem, DeliveryResult
from gateway.redact import redact
from gateway.routing import label_for
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.links import DbLinkStore
from gateway.storage.prepared import Prepared
from gateway.storage.tables import delivery_log, outbox

log = logging.getLogger(__name__)
_SETTLE_DONE = Prepared(update(outbox).where(outbox.c.id == bindparam("row_id")).values(
    status="done", lease_owner=None, lease_until=None, last_error=None, delivered_at=bindparam("at")))
_LOG_DELIVERED = Prepared(delivery_log.insert().values(outcome="delivered", **{
    name: bindparam(name) for name in ("outbox_id", "crm", "attempt", "operation", "remote_id", "detail",
                                       "duration_ms", "created_at")}))


class DeliveryWorker:
    """Claims a batch of outbox groups (one group = pending messages of one conversation, in order) and hands them to
    the CRM connector's ``deliver_groups``, which may coalesce a group into one write and batch many groups."""

    def __init__(self, runtime: Runtime, owner: str, crms: list[str] | None = None) -> None:
        self.rt = runtime
        self.owner = owner
        self.settings = runtime.config.settings.workers
        self.crms = crms
        self.acks = Acknowledgements(runtime.config, runtime.channels)

    def claim(self) -> list[list[list[Row[Any]]]]:
        groups = self.rt.queues.claim_outbox(self.owner, self.settings.batch_size, self.settings.lease_seconds,
                                             self.crms, per_conversation=self.settings.coalesce_max)
        return [groups] if groups else []

    def release(self, batches: list[list[list[Row[Any]]]]) -> None:
        rows = [row for groups in batches for group in groups for row in group]
        self.rt.queues.release(outbox, [row.id for row in rows], self.owner)

    def _item(self, row: Row[Any], stored: StoredContexts) -> DeliveryItem:
        context = stored.context(row.message_id)
        fields = row.fields
        catalog = self.rt.catalogs.get(row.crm)
        if fields is None or (catalog and catalog.problems(fields)):
            # dead-lettered by a mapping error and replayed, or rendered by an older mapping: the current one renders
            mapping = self.rt.mappings.get(row.crm, fresh=True)
            if mapping is not None:
                route = label_for(self.rt.config, context.message, context.identifiers(), row.crm)
                fields = mapping.apply(replace(context, route=route).for_mapping())
        fields = {} if fields is None else fields
        problems = catalog.problems(fields) if catalog else {}
        if problems:  # written, the field would be dropped without a word
            name, reason = next(iter(problems.items()))
            raise MappingRenderError(name, reason)
        return delivery_item(context, crm=row.crm, outbox_id=row.id, attempt=row.attempts, fields=fields,
                             certain_failures=row.certain_failures)

    def process(self, groups: list[list[Row[Any]]]) -> int:
        by_crm: dict[str, list[list[Row[Any]]]] = {}
        for group in groups:
            by_crm.setdefault(group[0].crm, []).append(group)
        with self.rt.engine.connect() as conn:  # the batch's messages, customers and conversations at once
            stored = StoredContexts(conn, [row.message_id for group in groups for row in group])
        for crm_name, crm_groups in by_crm.items():
            with withheld(_texts(crm_groups, stored)):  # a CRM's error may echo the message: not into the logs
                self._deliver(crm_name, crm_groups, stored)
        return sum(len(group) for group in groups)

    def _deliver(self, crm_name: str, groups: list[list[Row[Any]]], stored: StoredContexts) -> None:
        started = time.monotonic()
        crm = self.rt.crms.get(crm_name)
        rows = {row.id: row for group in groups for row in group}
        if crm is None:
            for row in rows.values():
                self._dead(row, PermanentError(f"crm {crm_name!r} is no longer configured", code="unknown_crm"),
                           "permanent", started)
            return
        item_groups: list[list[DeliveryItem]] = []
        outcomes: dict[int, DeliveryResult | DeliveryError] = {}
        for group in groups:
            items = []
            for row in group:
                try:
                    items.append(self._item(row, stored))
                except MappingRenderError as exc:
                    outcomes[row.id] = PermanentError(str(exc), code="mapping_error", field=exc.field)
                    break
                except Exception as exc:  # a missing or unreadable stored message: no retry can mend it
                    log.exception("outbox row %s cannot be prepared for %s", row.id, crm_name)
                    outcomes[row.id] = PermanentError(f"cannot prepare: {type(exc).__name__}: {exc}", code="internal")
                    break
            if items:
                item_groups.append(items)
        links = DbLinkStore(self.rt.engine, crm_name, self.rt.directories.get(crm_name))
        try:
            with self.rt.queues.holding(outbox, list(rows), self.owner, self.settings.lease_seconds):
                outcomes.update(crm.deliver_groups(item_groups, links))
        except Exception as exc:  # the whole call failed: each group's head takes the error, the rest wait
            log.exception("unexpected error delivering %d group(s) to %s", len(item_groups), crm_name)
            error = as_delivery_error(exc)
            for items in item_groups:
                outcomes.setdefault(items[0].outbox_id, error)
        items_by_id = {item.outbox_id: item for items in item_groups for item in items}
        resume = self._resume_times(rows, outcomes)
        untried, done = [], []
        for row_id, row in rows.items():
            outcome = outcomes.get(row_id)
            if isinstance(outcome, DeliveryResult):
                done.append((row, items_by_id[row_id], outcome))
            elif isinstance(outcome, PermanentError):
                self._dead(row, outcome, "permanent", started)
            elif isinstance(outcome, RetryableError):
                self._retry(row, outcome, started, resume.get(id(outcome)))
            else:
                untried.append(row_id)  # behind a failed message of its conversation: next round
        self._done(done, started)
        self.rt.queues.release(outbox, untried, self.owner)

    def _done(self, done: list[tuple[Row[Any], DeliveryItem, DeliveryResult]], started: float) -> None:
        """The batch's delivered rows settled in one transaction: one statement for the outbox rows, one for their
        delivery-log rows."""
        if not done:
            return
        now = utcnow()
        duration_ms = (time.monotonic() - started) * 1000
        with self.rt.engine.begin() as conn:
            _SETTLE_DONE.execute_many(conn, [{"row_id": row.id, "at": now} for row, _, _ in done])
            _LOG_DELIVERED.execute_many(conn, [{
                "outbox_id": row.id, "crm": row.crm, "attempt": row.attempts, "operation": result.operation,
                "remote_id": result.remote_id, "detail": result.detail, "duration_ms": duration_ms,
                "created_at": now} for row, _, result in done])
            acknowledged = [self.acks.after_delivery(conn, row.crm, row.conversation_id) for row, _, _ in done]
        if any(acknowledged):
            self.rt.sends_waiting.set()
        for row, item, result in done:
            metrics.DELIVERED.labels(row.crm).inc()
            metrics.LATENCY.labels(row.crm).observe((now - item.message.received_at).total_seconds())
            _log_delivered(row, item, result)

    def _resume_times(self, rows: dict[int, Row[Any]], outcomes: dict[int, Any]) -> dict[int, datetime]:
        """When to try again, by failure, for a failure that ended several rows' writes (a whole batch call, or the
        CRM refusing everything): one instant for all of them, so they come back together and are batched again
        (each row's own jitter would scatter them)."""
        shared: dict[int, list[tuple[int, RetryableError]]] = {}
        for row_id, outcome in outcomes.items():
            if row_id in rows and isinstance(outcome, RetryableError):
                shared.setdefault(id(outcome), []).append((rows[row_id].attempts, outcome))
        resume = {}
        for key, failed in shared.items():
            if len(failed) > 1 or failed[0][1].outage:
                delay = self.rt.retry_policy.next_delay(*max(failed, key=lambda pair: pair[0]))
                if delay is not None:  # one instant exactly: a claim then finds all of them due, or none
                    resume[key] = utcnow() + timedelta(seconds=delay)
        return resume

    def _retry(self, row: Row[Any], error: RetryableError, started: float, together: datetime | None = None) -> None:
        delay = self.rt.retry_policy.next_delay(row.attempts, error)
        metrics.FAILED.labels(row.crm, "retryable").inc()
        if delay is None:
            self._dead(row, error, "exhausted", started)
            return
        if together is not None:
            delay = max((together - utcnow()).total_seconds(), 0.0)
        log.warning("delivery of outbox row %s to %s failed (attempt %s, retry in %.0fs): %s",
                    row.id, row.crm, row.attempts, delay, redact(str(error)))
        self.rt.queues.reschedule(outbox, row.id, delay, str(error), at=together)
        with self.rt.engine.begin() as conn:
            if not error.uncertain:  # after the reschedule: a crash in between leaves the row uncertain, never certain
                conn.execute(update(outbox).where(outbox.c.id == row.id).values(
                    certain_failures=outbox.c.certain_failures + 1))
            self._log(conn, row, "retry", started, error_code=error.code, detail=str(error), uncertain=error.uncertain)

    def _dead(self, row: Row[Any], error: DeliveryError, error_class: str, started: float) -> None:
        if error_class == "permanent":
            metrics.FAILED.labels(row.crm, "permanent").inc()
        log.error("outbox row %s to %s dead-lettered (%s): %s", row.id, row.crm, error_class, redact(str(error)))
        with self.rt.engine.begin() as conn:
            self.rt.queues.dead_letter(conn, stage="delivery", source_id=row.id, target=row.crm,
                                       error_class=error_class, reason=str(error), attempts=row.attempts,
                                       code=error.code, field=error.field)
            self._log(conn, row, "dead", started, error_code=error.code, detail=str(error))
        metrics.DEAD_LETTERED.labels("delivery", row.crm).inc()

    def _log(self, conn: Any, row: Row[Any], outcome: str, started: float, **values: Any) -> None:
        conn.execute(delivery_log.insert().values(
            outbox_id=row.id, crm=row.crm, attempt=row.attempts, outcome=outcome,
            duration_ms=(time.monotonic() - started) * 1000, created_at=utcnow(), **values))


def _texts(groups: list[list[Row[Any]]], stored: StoredContexts) -> list[str]:
    """The texts of the groups' messages, withheld from the logs while they are delivered."""
    texts = []
    for group in groups:
        for row in group:
            data = stored.data(row.message_id) or {}
            texts.extend(data.get(name) or "" for name in ("text", "full_text", "subject"))
    return texts


def _log_delivered(row: Row[Any], item: DeliveryItem, result: DeliveryResult) -> None:
    """One INFO line per delivered message: ids and where it went (JSON fields in JSON logs); never its text or the
    customer's identifiers."""
    message = item.message
    log.info("delivered message %s (%s, %s) to %s: %s %s", message.id, message.channel.value, message.connector,
             row.crm, result.operation, result.remote_id or "", extra={
                 "event": "delivered", "message_id": message.id, "provider_message_id": message.provider_message_id,
                 "channel": message.channel.value, "connector": message.connector, "crm": row.crm,
                 "operation": result.operation, "remote_id": result.remote_id, "outbox_id": row.id,
                 "conversation_id": item.conversation.id, "customer_id": item.customer.id, "attempt": row.attempts})
