"""The worker process: pipeline and delivery loops in threads, plus the scheduler for periodic jobs.

SIGTERM (or SIGINT) stops claiming, lets every in-flight item finish, gives back claimed items not yet started,
and exits: nothing is lost, and nothing is done twice. A pipeline thread stuck past its processing deadline (its row
dead-lettered meanwhile) stops the process the same way, which then exits with ``EXIT_STUCK`` so that its
supervisor (``gateway run``, systemd, the container runtime) starts it again without the stuck thread. SIGHUP
(or a changed config file) reloads the mappings and the part of the config that can change while running
(``gateway.reload``); a changed mapping file is loaded again by itself.

A process runs every stage, or one (``stage``): ``pipeline`` (inbox -> outbox) or ``delivery`` (outbox -> CRM, and
the send and note threads and the scheduler with them). Under one interpreter lock the stages share one core, so
end to end is bounded by the sum of their costs per message; in two processes, by the slower stage alone.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from gateway import metrics
from gateway.delivery import DeliveryWorker
from gateway.escalation import CHECK_SECONDS, EscalationRunner
from gateway.notes import NoteWorker
from gateway.pipeline import PipelineWorker
from gateway.plugins import DirectorySync, InternalNotes, PollingChannel, ReplyPolling, ReplySender
from gateway.records import InboxItem
from gateway.reload import Watch
from gateway.replies import crm_inbox_name
from gateway.retention import retention_job
from gateway.runtime import Runtime
from gateway.sending import SendWorker
from gateway.storage.cursors import Cursors, exclusive
from gateway.storage.liveness import Liveness, this_process
from gateway.surveys import RatingWriter
from gateway.wakeup import INBOX, OUTBOX, Wakeup

log = logging.getLogger(__name__)
EXIT_STUCK = 70  # EX_SOFTWARE
STAGES = ("pipeline", "delivery")


class Stage(Protocol):
    """A worker stage: claims units of work (a batch of rows), processes one, gives back unstarted ones."""

    def claim(self) -> list[Any]: ...

    def process(self, unit: Any) -> int: ...

    def release(self, units: list[Any]) -> None: ...


def worker_id(kind: str, index: int) -> str:
    return f"{this_process()}:{kind}{index}"


def drain_once(stage: Stage, stop: threading.Event | None = None) -> int:
    """Claim once and process what was claimed; return how many rows were processed."""
    units = stage.claim()
    done = 0
    for position, unit in enumerate(units):
        if stop is not None and stop.is_set():
            stage.release(units[position:])
            return done
        done += stage.process(unit)
    return done


def run_loop(stage: Stage, stop: threading.Event, idle_seconds: float,
             wake: threading.Event | None = None, on_work: Callable[[], None] | None = None) -> None:
    """Drain the stage until ``stop``; call ``on_work`` after each round that processed rows (to wake the next
    stage). When idle, wait ``idle_seconds`` or until ``wake`` is set (new work)."""
    while not stop.is_set():
        try:
            if drain_once(stage, stop) > 0:
                if on_work is not None:
                    on_work()
                continue
            if wake is None:
                stop.wait(idle_seconds)
            elif wake.wait(idle_seconds) and not stop.is_set():
                wake.clear()  # never the wake-up stop() gave: a thread of the stage not waiting yet must see it too
        except Exception:
            log.exception("worker loop error; continuing after a pause")
            stop.wait(max(idle_seconds, 1.0))


class InboxWriter:
    """The InboxSink a polling channel writes to."""

    def __init__(self, runtime: Runtime, connector: str) -> None:
        self.rt = runtime
        self.connector = connector
        self.wakeup = Wakeup(runtime.data_dir / "locks", INBOX)

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int:
        counted = self.rt.queues.store_inbox(self.connector, items, headers or {}, "")
        if counted.stored:
            self.wakeup.notify()
            metrics.RECEIVED.labels(self.connector).inc(counted.stored)
        if counted.duplicates:
            metrics.DUPLICATES.labels(self.connector).inc(counted.duplicates)
        return counted.stored


def poll_job(runtime: Runtime, channel: PollingChannel) -> Callable[[], None]:
    """A scheduler job: poll one channel while holding its cross-process lock; skip if another process has it."""
    sink = InboxWriter(runtime, channel.name)
    cursor_store = Cursors(runtime.engine)

    def job() -> None:
        with exclusive(runtime.engine, f"poll:{channel.name}", runtime.data_dir / "locks") as acquired:
            if not acquired:
                return
            try:
                channel.poll(sink, cursor_store)
            except Exception:
                log.exception("polling %s failed; the next poll retries", channel.name)

    return job


def directory_job(runtime: Runtime, name: str, crm: DirectorySync) -> Callable[[], None]:
    """A scheduler job: bring the CRM's directory of existing contacts up to date (one process at a time)."""
    directory = runtime.directories[name]
    cursor_store = Cursors(runtime.engine)

    def job() -> None:
        with exclusive(runtime.engine, f"directory:{name}", runtime.data_dir / "locks") as acquired:
            if not acquired:
                return
            try:
                crm.sync_directory(directory, cursor_store)
            except Exception:
                log.exception("syncing the %s directory failed; the next run retries", name)

    return job


def reply_poll_job(runtime: Runtime, name: str, crm: ReplyPolling) -> Callable[[], None]:
    """A scheduler job: store the agent replies a CRM poll finds (one process at a time); the pipeline sends them."""
    sink = InboxWriter(runtime, crm_inbox_name(name))
    cursor_store = Cursors(runtime.engine)

    def job() -> None:
        with exclusive(runtime.engine, f"replies:{name}", runtime.data_dir / "locks") as acquired:
            if not acquired:
                return
            try:
                crm.poll_replies(sink, cursor_store)
            except Exception:
                log.exception("polling %s for agent replies failed; the next poll retries", name)

    return job


def automation_job(runtime: Runtime) -> Callable[[], None]:
    """A scheduler job in every worker process: due escalations and survey ratings, each claimed by one worker."""
    escalations = EscalationRunner(runtime, worker_id("escalation", 0))
    ratings = RatingWriter(runtime, worker_id("ratings", 0))

    def job() -> None:
        for name, run in (("escalations", escalations.run_due), ("survey ratings", ratings.run_due)):
            try:
                run()
            except Exception:
                log.exception("%s failed; the next run retries", name)

    return job


class WorkerProcess:
    """Runs the loops until ``stop()``; used by ``gateway work`` and ``gateway run``.

    ``stage`` None runs every stage here; ``pipeline`` only the pipeline threads; ``delivery`` the rest (delivery,
    sends, notes) and the scheduler's jobs, so that those run in one process of the pair.
    """

    def __init__(self, runtime: Runtime, jobs: list[tuple[Callable[[], None], float]] | None = None,
                 stage: str | None = None) -> None:
        if stage is not None and stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        self.rt = runtime
        self.stage = stage
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()  # SIGHUP
        self.inbox_waiting = threading.Event()  # set on a wake-up from a process that stored inbox rows
        self.outbox_waiting = threading.Event()  # set when a pipeline (this process's or another's) stored rows
        self.outbox_wakeup = Wakeup(runtime.data_dir / "locks", OUTBOX)
        self.threads: list[threading.Thread] = []
        self.stuck: set[threading.Thread] = set()  # never returned from a row past its deadline: not waited for
        self.exit_code = 0
        self.liveness: Liveness | None = None
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.jobs = jobs or []
        if not self._runs("delivery"):
            return  # the scheduler's jobs run beside the delivery stage
        for channel in runtime.channels.values():
            if isinstance(channel, PollingChannel):
                self.jobs.append((poll_job(runtime, channel), channel.poll_seconds))
        for name, crm in runtime.crms.items():
            if isinstance(crm, DirectorySync) and crm.directory_sync_seconds:
                self.jobs.append((directory_job(runtime, name, crm), crm.directory_sync_seconds))
            if isinstance(crm, ReplyPolling) and crm.reply_poll_seconds:
                self.jobs.append((reply_poll_job(runtime, name, crm), crm.reply_poll_seconds))
        self.jobs.append((retention_job(runtime), 3600))  # runs when the last run (any process) is a day old
        if runtime.config.settings.escalations or runtime.config.settings.surveys:
            self.jobs.append((automation_job(runtime), CHECK_SECONDS))

    def _runs(self, stage: str) -> bool:
        return self.stage is None or self.stage == stage

    def _stages(self) -> list[tuple[str, Stage]]:
        settings = self.rt.config.settings.workers
        stages: list[tuple[str, Stage]] = []
        if self._runs("pipeline"):
            stages += [(f"pipeline{i}", PipelineWorker(self.rt, worker_id("pipeline", i), on_stuck=self._stuck))
                       for i in range(settings.pipeline_threads)]
        if not self._runs("delivery"):
            return stages
        stages += [(f"delivery{i}", DeliveryWorker(self.rt, worker_id("delivery", i)))
                   for i in range(settings.delivery_threads)]
        if any(isinstance(channel, ReplySender) for channel in self.rt.channels.values()):
            stages += [(f"send{i}", SendWorker(self.rt, worker_id("send", i))) for i in range(settings.send_threads)]
        if any(isinstance(crm, InternalNotes) for crm in self.rt.crms.values()):
            stages += [(f"notes{i}", NoteWorker(self.rt, worker_id("notes", i))) for i in range(settings.note_threads)]
        return stages

    def start(self) -> None:
        settings = self.rt.config.settings.workers
        # held while this process lives: other workers take its rows over as soon as it is gone
        self.liveness = Liveness(self.rt.engine, self.rt.data_dir / "locks")
        self.liveness.hold()
        self.rt.queues.liveness = self.liveness
        stages = self._stages()
        locks = self.rt.data_dir / "locks"
        if self._runs("pipeline"):
            Wakeup(locks, INBOX).listen([self.inbox_waiting], self.stop_event)
        if self._runs("delivery"):
            Wakeup(locks, OUTBOX).listen([self.outbox_waiting, self.rt.sends_waiting], self.stop_event)
        for name, stage in stages:
            wake: threading.Event | None = None
            on_work: Callable[[], None] | None = None
            if isinstance(stage, SendWorker):
                wake = self.rt.sends_waiting
            elif isinstance(stage, DeliveryWorker):
                wake = self.outbox_waiting
            elif isinstance(stage, PipelineWorker):
                wake, on_work = self.inbox_waiting, self._stored
            thread = threading.Thread(target=run_loop,
                                      args=(stage, self.stop_event, settings.idle_poll_seconds, wake, on_work),
                                      name=name, daemon=False)
            thread.start()
            self.threads.append(thread)
        for job, seconds in self.jobs:
            self.scheduler.add_job(job, "interval", seconds=seconds, max_instances=1, coalesce=True,
                                   next_run_time=datetime.now(UTC))
        self.scheduler.start()
        threading.Thread(target=self._watch_mappings, name="mappings", daemon=True).start()
        log.info("worker started%s: %s", f" ({self.stage} stage)" if self.stage else "",
                 ", ".join(name for name, _ in stages) or "no threads")

    def _stored(self) -> None:
        """The pipeline stored rows: this process's delivery threads look now, or the delivery process's (its send
        threads too: the rows may be replies to send)."""
        if self._runs("delivery"):
            self.outbox_waiting.set()
        else:
            self.outbox_wakeup.notify()

    def _watch_mappings(self) -> None:
        """Reload on request (SIGHUP); between requests, what changed: the config file, or a mapping's."""
        watch = Watch(self.rt)
        while not self.stop_event.is_set():
            try:
                requested = self.reload_requested.wait(self.rt.mappings.check_seconds)
                if requested:
                    self.reload_requested.clear()
                watch.poll(requested=requested)
            except Exception:
                log.exception("reloading the mappings failed; the ones loaded before stay in use")

    def stop(self) -> None:
        self.stop_event.set()
        for event in (self.inbox_waiting, self.outbox_waiting, self.rt.sends_waiting):
            event.set()  # the loops waiting for a wake-up see the stop now, not at their next poll

    def _stuck(self, thread: threading.Thread, what: str) -> None:
        log.critical("%s past workers.max_processing_seconds (the row is dead-lettered); stopping this worker "
                     "process so that it is started again without that thread", what)
        self.stuck.add(thread)
        self.exit_code = EXIT_STUCK
        self.stop()

    def wait(self) -> None:
        for thread in self.threads:
            while thread.is_alive() and thread not in self.stuck:
                thread.join(timeout=0.5)
        self.scheduler.shutdown(wait=True)
        self.outbox_wakeup.close()
        if self.liveness is not None:
            self.liveness.release()
        log.info("worker stopped: in-flight work finished")

    def run_forever(self) -> int:
        """Run until SIGTERM/SIGINT or a stuck thread; the exit code (``EXIT_STUCK`` when a thread is stuck)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        self.start()
        self.stop_event.wait()
        self.wait()
        return self.exit_code
