"""The delivery worker: outbox -> CRM connector -> delivery log, with durable retries and dead letters."""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
from sqlalchemy import Engine, Row, select

from gateway import metrics
from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.mapping import MappingRenderError
from gateway.model import Message
from gateway.pipeline import customer_context, mapping_context
from gateway.plugins import ConversationView, CustomerView, DeliveryItem, DeliveryResult
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import crm_links, delivery_log, messages, outbox

log = logging.getLogger(__name__)


class DbLinkStore:
    """Local id -> CRM record id for one CRM instance; every write commits at once."""

    def __init__(self, engine: Engine, crm: str) -> None:
        self.engine = engine
        self.crm = crm

    def get(self, entity: str, local_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(crm_links.c.remote_id, crm_links.c.data).where(
                crm_links.c.crm == self.crm, crm_links.c.entity == entity,
                crm_links.c.local_id == local_id)).first()
        return (row.remote_id, dict(row.data)) if row else None

    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None:
        values = {"crm": self.crm, "entity": entity, "local_id": local_id, "remote_id": remote_id,
                  "data": data or {}, "updated_at": utcnow()}
        insert = insert_for(self.engine, crm_links).values(**values)
        statement = insert.on_conflict_do_update(
            index_elements=["crm", "entity", "local_id"],
            set_={"remote_id": remote_id, "data": values["data"], "updated_at": values["updated_at"]})
        with self.engine.begin() as conn:
            conn.execute(statement)


def idempotency_key(crm: str, message_id: str) -> str:
    return f"gw-{crm}-{message_id}"


class DeliveryWorker:
    def __init__(self, runtime: Runtime, owner: str, crms: list[str] | None = None) -> None:
        self.rt = runtime
        self.owner = owner
        self.settings = runtime.config.settings.workers
        self.crms = crms

    def claim(self) -> list[Row[Any]]:
        return self.rt.queues.claim_outbox(self.owner, self.settings.batch_size, self.settings.lease_seconds,
                                           self.crms)

    def release(self, rows: list[Row[Any]]) -> None:
        self.rt.queues.release(outbox, [row.id for row in rows], self.owner)

    def _item(self, row: Row[Any]) -> DeliveryItem:
        with self.rt.engine.connect() as conn:
            stored = conn.execute(select(messages).where(messages.c.id == row.message_id)).one()
            customer = customer_context(conn, stored.customer_id)
        message = Message.model_validate(stored.data)
        conversation = {"id": stored.conversation_id, "channel": message.channel.value,
                        "thread_rule": stored.thread_rule, "opened_by_message": stored.thread_rule == "new"}
        fields = row.fields
        if fields is None:  # dead-lettered by a mapping error, replayed after the mapping was fixed
            fields = self.rt.mappings[row.crm].apply(mapping_context(message, customer, conversation))
        return DeliveryItem(
            outbox_id=row.id, attempt=row.attempts, idempotency_key=idempotency_key(row.crm, row.message_id),
            message=message,
            customer=CustomerView(customer["id"], customer["display_name"],
                                  tuple((i["kind"], i["value"]) for i in customer["identifiers"])),
            conversation=ConversationView(stored.conversation_id, message.channel.value,
                                          conversation["opened_by_message"]),
            fields=fields)

    def process(self, row: Row[Any]) -> None:
        crm = self.rt.crms.get(row.crm)
        started = time.monotonic()
        if crm is None:
            self._dead(row, PermanentError(f"crm {row.crm!r} is no longer configured", code="unknown_crm"),
                       "permanent", started)
            return
        try:
            item = self._item(row)
            result = crm.deliver(item, DbLinkStore(self.rt.engine, row.crm))
        except MappingRenderError as exc:
            self._dead(row, PermanentError(str(exc), code="mapping_error", field=exc.field), "permanent", started)
        except PermanentError as exc:
            self._dead(row, exc, "permanent", started)
        except RetryableError as exc:
            self._retry(row, exc, started)
        except (requests.Timeout, requests.ConnectionError) as exc:
            self._retry(row, RetryableError(f"{type(exc).__name__}: {exc}", code="network"), started)
        except Exception as exc:
            log.exception("unexpected error delivering outbox row %s to %s", row.id, row.crm)
            self._retry(row, RetryableError(f"{type(exc).__name__}: {exc}", code="internal"), started)
        else:
            self._done(row, item, result, started)

    def _done(self, row: Row[Any], item: DeliveryItem, result: DeliveryResult, started: float) -> None:
        now = utcnow()
        with self.rt.engine.begin() as conn:
            self.rt.queues.finish(conn, outbox, row.id, "done", delivered_at=now, last_error=None)
            self._log(conn, row, "delivered", started, operation=result.operation, remote_id=result.remote_id,
                      detail=result.detail)
        metrics.DELIVERED.labels(row.crm).inc()
        metrics.LATENCY.labels(row.crm).observe((now - item.message.received_at).total_seconds())

    def _retry(self, row: Row[Any], error: RetryableError, started: float) -> None:
        delay = self.rt.retry_policy.next_delay(row.attempts, error)
        metrics.FAILED.labels(row.crm, "retryable").inc()
        if delay is None:
            self._dead(row, error, "exhausted", started)
            return
        log.warning("delivery of outbox row %s to %s failed (attempt %s, retry in %.0fs): %s",
                    row.id, row.crm, row.attempts, delay, error)
        self.rt.queues.reschedule(outbox, row.id, delay, str(error))
        with self.rt.engine.begin() as conn:
            self._log(conn, row, "retry", started, error_code=error.code, detail=str(error))

    def _dead(self, row: Row[Any], error: DeliveryError, error_class: str, started: float) -> None:
        if error_class == "permanent":
            metrics.FAILED.labels(row.crm, "permanent").inc()
        log.error("outbox row %s to %s dead-lettered (%s): %s", row.id, row.crm, error_class, error)
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
