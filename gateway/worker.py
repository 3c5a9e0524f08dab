"""The worker process: pipeline and delivery loops in threads, plus the scheduler for periodic jobs.

SIGTERM (or SIGINT) stops claiming, lets every in-flight item finish, gives back claimed items not yet started,
and exits: nothing is lost, and nothing is done twice. A pipeline thread stuck past its processing deadline (its row
dead-lettered meanwhile) stops the process the same way, which then exits with ``EXIT_STUCK`` so that its
supervisor (``gateway run``, systemd, the container runtime) starts it again without the stuck thread. SIGHUP
(or a changed config file) reloads the mappings and the part of the config that can change while running
(``gateway.reload``); a changed mapping file is loaded again by itself.
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

log = logging.getLogger(__name__)
EXIT_STUCK = 70  # EX_SOFTWARE


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
             wake: threading.Event | None = None) -> None:
    """Drain the stage until ``stop``; when idle, wait ``idle_seconds`` or until ``wake`` is set (new work)."""
    while not stop.is_set():
        try:
            if drain_once(stage, stop) == 0:
                if wake is None:
                    stop.wait(idle_seconds)
                elif wake.wait(idle_seconds):
                    wake.clear()
        except Exception:
            log.exception("worker loop error; continuing after a pause")
            stop.wait(max(idle_seconds, 1.0))


class InboxWriter:
    """The InboxSink a polling channel writes to."""

    def __init__(self, runtime: Runtime, connector: str) -> None:
        self.rt = runtime
        self.connector = connector

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int:
        counted = self.rt.queues.store_inbox(self.connector, items, headers or {}, "")
        if counted.stored:
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
    """Runs the loops until ``stop()``; used by ``gateway work`` and ``gateway run``."""

    def __init__(self, runtime: Runtime, jobs: list[tuple[Callable[[], None], float]] | None = None) -> None:
        self.rt = runtime
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()  # SIGHUP
        self.threads: list[threading.Thread] = []
        self.stuck: set[threading.Thread] = set()  # never returned from a row past its deadline: not waited for
        self.exit_code = 0
        self.liveness: Liveness | None = None
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.jobs = jobs or []
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

    def start(self) -> None:
        settings = self.rt.config.settings.workers
        # held while this process lives: other workers take its rows over as soon as it is gone
        self.liveness = Liveness(self.rt.engine, self.rt.data_dir / "locks")
        self.liveness.hold()
        self.rt.queues.liveness = self.liveness
        stages: list[tuple[str, Stage]] = []
        stages += [(f"pipeline{i}", PipelineWorker(self.rt, worker_id("pipeline", i), on_stuck=self._stuck))
                   for i in range(settings.pipeline_threads)]
        stages += [(f"delivery{i}", DeliveryWorker(self.rt, worker_id("delivery", i)))
                   for i in range(settings.delivery_threads)]
        if any(isinstance(channel, ReplySender) for channel in self.rt.channels.values()):
            stages += [(f"send{i}", SendWorker(self.rt, worker_id("send", i))) for i in range(settings.send_threads)]
        if any(isinstance(crm, InternalNotes) for crm in self.rt.crms.values()):
            stages += [(f"notes{i}", NoteWorker(self.rt, worker_id("notes", i))) for i in range(settings.note_threads)]
        for name, stage in stages:
            wake = self.rt.sends_waiting if isinstance(stage, SendWorker) else None
            thread = threading.Thread(target=run_loop,
                                      args=(stage, self.stop_event, settings.idle_poll_seconds, wake),
                                      name=name, daemon=False)
            thread.start()
            self.threads.append(thread)
        for job, seconds in self.jobs:
            self.scheduler.add_job(job, "interval", seconds=seconds, max_instances=1, coalesce=True,
                                   next_run_time=datetime.now(UTC))
        self.scheduler.start()
        threading.Thread(target=self._watch_mappings, name="mappings", daemon=True).start()
        log.info("worker started: %s", ", ".join(name for name, _ in stages) or "no threads")

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
