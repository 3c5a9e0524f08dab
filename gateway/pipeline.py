"""The pipeline worker: inbox -> normalise -> customer -> conversation -> mapping -> outbox.

A claimed batch of inbox rows is normalised and enriched here, outside any transaction, then stored by
``gateway.message_store`` in one transaction, so a crash anywhere repeats the rows and never half-applies one. A
row whose connector cannot normalise it (or split it, for a whole request the ingress stored unsplit) is quarantined
in the dead letters with the reason; the raw bytes stay.

Every row has a processing deadline, lease or no lease. While a row is normalised and enriched, the lease keeper
checks its clock: past ``workers.max_processing_seconds`` it stops renewing, dead-letters the row (``exhausted``,
``processing_timeout``), gives the batch's other rows back, and reports the stuck thread (the worker process then
restarts without it: a Python thread cannot be stopped). A row whose worker died while processing it (crash, kill)
is claimed again, alone, and once claimed more often than ``retry.max_attempts`` it is dead-lettered before
anything runs (``processing_abandoned``). A worker stores only rows it still holds, so a stuck thread that returns
at last changes nothing.

A customer's rows are stored in the order they arrived (``gateway.ordering``): a row waits while an older row of
the same sender is pending, held by a worker that died or waiting for a retry; the rows of a worker that died are
taken over as soon as its process is known to be gone (``gateway.storage.liveness``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Row

from gateway import metrics
from gateway.enrich import Enriched, Job, downloads_media, enrich_all, needs_enrichment, senders_of, without_enrichment
from gateway.errors import DeliveryError
from gateway.language import detect_language, load_model
from gateway.message_store import MessageStore, Prepared
from gateway.ordering import order_keys, record_keys
from gateway.plugins import AgentReplies, WebhookChannel
from gateway.records import REQUEST_KIND, RawRecord
from gateway.redact import describe_error
from gateway.replies import ReplyIntake, crm_of
from gateway.retry import in_process_retry
from gateway.runtime import Runtime
from gateway.storage.links import DbLinkStore
from gateway.storage.queues import LeaseLost
from gateway.storage.tables import inbox
from gateway.surveys import read_statuses
from gateway.webhooks import Headers, HookRequest

log = logging.getLogger(__name__)
ENRICH_ATTEMPTS = 5  # then a message whose media cannot be fetched is delivered without them


def split_again(record: RawRecord, connector: object) -> list[RawRecord]:
    """The items of a whole request stored because the ingress could not split it (``REQUEST_KIND``), split now
    by the channel (or the CRM's reply hook) it came to: after a fix, a replayed row goes on like any other."""
    if isinstance(connector, WebhookChannel):
        split = connector.split
    elif isinstance(connector, AgentReplies):
        split = connector.split_reply_hook
    else:
        raise TypeError(f"{record.connector} no longer takes webhooks: the stored request cannot be split")
    request = HookRequest("POST", urlsplit(record.public_url).path, "", Headers(record.headers), record.body,
                          record.public_url)
    return [replace(record, provider_id=item.provider_id, kind=item.kind, body=item.body,
                    content_type=item.content_type) for item in split(request)]


@dataclass(frozen=True)
class _InProgress:
    row: Row[Any]
    started: float
    thread: threading.Thread


StuckHandler = Callable[[threading.Thread, str], None]


class PipelineWorker:
    def __init__(self, runtime: Runtime, owner: str, on_stuck: StuckHandler | None = None) -> None:
        self.rt = runtime
        self.owner = owner
        self.settings = runtime.config.settings.workers
        self.replies = ReplyIntake(runtime.channels, runtime.crms)  # type: ignore[arg-type]
        self.store = MessageStore(runtime, owner, self.replies)
        self.on_stuck = on_stuck  # told of a thread stuck past the processing deadline
        self.clock: Callable[[], float] = time.monotonic
        self._in_progress: _InProgress | None = None
        self._held_ids: list[int] = []
        self._abandoned = False
        load_model()

    def claim(self) -> list[list[Row[Any]]]:
        """Rows never tried as one batch; a row tried before alone, or dead-lettered when its tries are spent."""
        rows = self.rt.queues.claim_inbox(self.owner, self.settings.inbox_batch_size, self.settings.lease_seconds)
        units = [[row for row in rows if row.attempts == 1]]
        for row in rows:
            if row.attempts <= 1:
                continue
            if row.attempts > self.settings.retry.max_attempts:  # the earlier tries ended neither done nor failed
                log.error("inbox row %s from %s: claimed %d times without finishing; dead-lettered",
                          row.id, row.connector, row.attempts)
                self._dead(row, "exhausted", f"claimed {row.attempts} times and never finished: its worker stopped "
                           "each time while processing it (crashed, killed or over workers.max_processing_seconds)",
                           "processing_abandoned")
                continue
            units.append([row])
        return [unit for unit in units if unit]

    def release(self, batches: list[list[Row[Any]]]) -> None:
        self.rt.queues.release(inbox, [row.id for rows in batches for row in rows], self.owner)

    def process(self, rows: list[Row[Any]]) -> int:
        """Normalise and enrich each row, then store the whole batch in one transaction (one commit).

        The batch is first stored without a savepoint per row. Should a row fail (or its lease be lost), that
        transaction is rolled back and the batch stored again with each row in its own savepoint: a row that fails
        then is rolled back alone and retried by itself.
        """
        self._abandoned = False
        self._held_ids = [row.id for row in rows]
        with self.rt.queues.holding(inbox, [row.id for row in rows], self.owner, self.settings.lease_seconds,
                                    still_working=self._within_deadline):
            prepared = self._prepare_batch(rows)
        if self._abandoned:
            log.warning("a pipeline thread stuck past its deadline returned; its rows were settled meanwhile")
            return len(rows)
        failed: list[Prepared] = []
        lost: list[Prepared] = []
        waiting = self.store.store_batch(prepared)
        if waiting is None:
            waiting, failed, lost = self.store.store_row_by_row(prepared)
        for item in waiting:
            self._wait_in_order(item)
        for item in failed:
            self._store_alone(item)
        for item in lost:
            log.warning("inbox row %s from %s was taken over or settled while being processed; not stored here",
                        item.row.id, item.row.connector)
        for item in prepared:
            if item not in failed and item not in lost and item not in waiting:
                metrics.PROCESSED.labels(item.row.connector, item.outcome).inc()
        if any(item.replies or item.solved for item in prepared):
            self.rt.sends_waiting.set()  # this process's send threads look at once instead of at their next poll
        return len(rows)

    def _prepare_batch(self, rows: list[Row[Any]]) -> list[Prepared]:
        """Each row normalised, then its messages enriched on the enricher's threads, outside any transaction.

        The batch waits at most ``enrich_wait_seconds`` for the enrichment it started. A row whose enrichment is
        still running, or that follows such a row of the same sender, goes back to the queue (the wait is not an
        attempt) and finds the same job when it comes back; the others are ready to store.
        """
        normalized: list[Prepared] = []
        try:
            for row in rows:
                self._in_progress = _InProgress(row, self.clock(), threading.current_thread())
                item = self._prepare(row)
                if self._abandoned:  # past the deadline: the lease keeper settled the batch's rows meanwhile
                    return []
                if item is not None:
                    normalized.append(item)
        finally:
            self._in_progress = None
        senders = {item.row.id: senders_of(item.messages) for item in normalized}
        normalized = [replace(item, keys=order_keys(senders[item.row.id])) for item in normalized]
        keys = {row.id: frozenset[str]() for row in rows} | {item.row.id: item.keys for item in normalized}
        record_keys(self.rt.engine, keys)
        jobs: dict[int, Job] = {}
        started: list[Future[Any]] = []
        for item in normalized:
            if not item.messages:
                continue
            connector = self.rt.channels[item.row.connector]
            if needs_enrichment(connector, item.messages):
                job, new = self.rt.enricher.job(
                    item.row.id, partial(enrich_all, connector, item.messages),
                    media=downloads_media(item.messages), senders=senders[item.row.id])
                jobs[item.row.id] = job
                if new:
                    started.append(job.future)
        if started:
            wait(started, timeout=self.settings.enrich_wait_seconds)
        ready, held = [], set()
        for item in normalized:
            if not item.messages:
                ready.append(item)
                continue
            job = jobs.get(item.row.id)
            row_senders = senders[item.row.id]
            if ((job is not None and not job.future.done())
                    or row_senders & (held | self.rt.enricher.running_before(item.row.id))):
                held |= row_senders
                self.rt.queues.reschedule(inbox, item.row.id, self.settings.enrich_wait_seconds,
                                          "waiting for media or a profile", count_attempt=False)
                continue
            enriched = self._enriched(item, job) if job is not None else self._with_language(
                item, [(message, None) for message in item.messages])
            if enriched is not None:
                ready.append(enriched)
        return ready

    def _within_deadline(self) -> bool:
        """Asked by the lease keeper before each renewal: False (and the rows settled) once a row overran."""
        current = self._in_progress
        if current is None or self.clock() - current.started <= self.settings.max_processing_seconds:
            return True
        self._abandoned = True
        row = current.row
        reason = (f"processing took over {self.settings.max_processing_seconds:g} s (workers.max_processing_seconds):"
                  f" the {row.connector} connector's normalize or media fetch did not return")
        log.error("inbox row %s from %s: %s; dead-lettered", row.id, row.connector, reason)
        try:
            with self.rt.engine.begin() as conn:
                letter = self.rt.queues.dead_letter(conn, stage="pipeline", source_id=row.id, target=row.connector,
                                                    error_class="exhausted", reason=reason, attempts=row.attempts,
                                                    code="processing_timeout", owner=self.owner)
            if letter is not None:
                metrics.DEAD_LETTERED.labels("pipeline", row.connector).inc()
            self.rt.queues.release(inbox, [row_id for row_id in self._held_ids if row_id != row.id], self.owner)
        except Exception:
            # the leases run out instead; the row's next claims count towards processing_abandoned
            log.exception("could not settle the rows of a stuck pipeline thread")
        if self.on_stuck is not None:
            self.on_stuck(current.thread, f"pipeline thread {current.thread.name} is stuck in inbox row {row.id}")
        return False

    def _prepare(self, row: Row[Any]) -> Prepared | None:
        """Normalise one row (pure); None when it is settled."""
        record = RawRecord(
            inbox_id=row.id, connector=row.connector, provider_id=row.provider_id, kind=row.kind, body=row.body,
            content_type=row.content_type, headers=Headers(row.headers), public_url=row.public_url,
            received_at=row.received_at)
        crm_name = crm_of(row.connector)
        if crm_name is not None:
            return self._prepare_replies(row, record, crm_name)
        connector = self.rt.channels.get(row.connector)
        if connector is None:
            self._dead(row, "permanent", f"channel {row.connector!r} is no longer configured", "unknown_channel")
            return None
        try:
            parts = split_again(record, connector) if record.kind == REQUEST_KIND else [record]
            normalized = [m for part in parts if part.kind != "status" for m in connector.normalize(part)]
            statuses = [s for part in parts if part.kind == "status" for s in connector.statuses(part)]
        except Exception as exc:
            self._quarantine(row, exc)
            return None
        return Prepared(row, normalized, statuses)

    def _prepare_replies(self, row: Row[Any], record: RawRecord, crm_name: str) -> Prepared | None:
        """A CRM's reply event: the connector reads the replies it carries (it may call the CRM's API)."""
        if crm_name not in self.rt.crms:
            self._dead(row, "permanent", f"crm {crm_name!r} is no longer configured", "unknown_crm")
            return None
        links = DbLinkStore(self.rt.engine, crm_name, self.rt.directories.get(crm_name))
        try:
            parts = split_again(record, self.rt.crms[crm_name]) if record.kind == REQUEST_KIND else [record]
        except Exception as exc:
            self._quarantine(row, exc)
            return None
        try:
            replies = [reply for part in parts for reply in self.replies.read(crm_name, part, links)]
            solved = read_statuses(self.rt.crms[crm_name], parts, links)
        except DeliveryError as exc:
            if not exc.retryable:
                self._dead(row, "permanent", str(exc), exc.code or "reply_failed")
                return None
            self._failed(row, exc)
            return None
        except Exception as exc:
            self._failed(row, exc)
            return None
        return Prepared(row, [], [], replies, crm_name, solved=solved)

    def _wait_in_order(self, item: Prepared) -> None:
        """An older row of the same sender is still pending: this one goes back to the queue (not an attempt)."""
        log.info("inbox row %s from %s waits for an older row of its sender", item.row.id, item.row.connector)
        self.rt.queues.reschedule(inbox, item.row.id, self.settings.enrich_wait_seconds,
                                  "waiting for an older message of the same sender", count_attempt=False)

    def _store_alone(self, item: Prepared) -> None:
        """A row that failed in the batch: its own transaction, a few quick tries, then the retry schedule."""
        batch = None
        try:
            for attempt in in_process_retry(attempts=4):
                with attempt:
                    batch = self.store.store_one(item)
        except LeaseLost:
            log.warning("inbox row %s from %s was taken over or settled while being processed; not stored here",
                        item.row.id, item.row.connector)
            return
        except Exception as exc:
            self._failed(item.row, exc)
            return
        if batch is None:
            self._wait_in_order(item)
            return
        batch.count_dead_letters()
        metrics.PROCESSED.labels(item.row.connector, item.outcome).inc()

    def _enriched(self, item: Prepared, job: Job) -> Prepared | None:
        """The row's messages as its finished job left them; None when the row is to be tried again.

        When enrichment keeps failing, the message goes on without it rather than wait: the attachments keep their
        provider URLs, and ``extras.enrich_error`` says what was missing.
        """
        self.rt.enricher.forget(item.row.id)
        try:
            results = job.future.result()
        except Exception as exc:  # the job was cancelled (shutdown)
            self._failed(item.row, exc)
            return None
        failures = [exc for _, exc in results if exc is not None]
        # the last try delivers without the media even when retry.max_attempts is below ENRICH_ATTEMPTS
        if failures and item.row.attempts < min(ENRICH_ATTEMPTS, self.settings.retry.max_attempts):
            self._failed(item.row, failures[0])
            return None
        return self._with_language(item, results)

    def _with_language(self, item: Prepared, results: Enriched) -> Prepared:
        """The row's enriched messages (marked when their enrichment failed), each with its language detected."""
        messages = []
        for message, exc in results:
            if exc is not None:
                log.warning("%s: delivering message %s without its media/profile after %d attempts: %s",
                            message.connector, message.provider_message_id, item.row.attempts,
                            describe_error(exc))
                message = without_enrichment(message, exc, item.row.attempts)
            if message.language is None:
                message = message.model_copy(update={"language": detect_language(message.text or message.full_text)})
            messages.append(message)
        return replace(item, messages=messages)

    def _failed(self, row: Row[Any], exc: Exception) -> None:
        """Storage or mapping trouble: try the row again later; dead-letter it when the budget is spent."""
        reason = describe_error(exc)
        log.error("inbox row %s from %s failed: %s", row.id, row.connector, reason, exc_info=exc)
        delay = self.rt.retry_policy.next_delay(row.attempts, exc)
        if delay is None:
            self._dead(row, "exhausted", reason, "pipeline_failed")
        else:
            self.rt.queues.reschedule(inbox, row.id, delay, reason)

    def _quarantine(self, row: Row[Any], exc: Exception) -> None:
        """A row its connector cannot read: a dead letter with the reason; the raw bytes stay for a replay."""
        log.warning("quarantined inbox row %s from %s: %s", row.id, row.connector, describe_error(exc),
                    exc_info=True)
        code = "split_failed" if row.kind == REQUEST_KIND else "normalize_failed"
        self._dead(row, "quarantined", describe_error(exc), code)
        metrics.PROCESSED.labels(row.connector, "quarantined").inc()

    def _dead(self, row: Row[Any], error_class: str, reason: str, code: str) -> None:
        with self.rt.engine.begin() as conn:
            self.rt.queues.dead_letter(conn, stage="pipeline", source_id=row.id, target=row.connector,
                                       error_class=error_class, reason=reason, attempts=row.attempts, code=code)
        metrics.DEAD_LETTERED.labels("pipeline", row.connector).inc()
