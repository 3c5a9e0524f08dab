"""Connectors' network work for the pipeline (media downloads, profile lookups) on threads of its own.

The pipeline hands each inbox row's enrichment to an ``Enricher`` and waits a short while for the batch; a row whose
work is still running then goes back to the queue and, when claimed again, picks up the same job instead of
starting the download over. Other customers' messages are stored meanwhile: a slow media host delays only the
messages waiting for its media.

Rows with media to download and rows without run on separate pools, so downloads that fill their pool never hold
up a plain text message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.attachments import SCHEME, failure_reason
from gateway.model import Message
from gateway.plugins import ChannelConnector

KEEP_FINISHED_SECONDS = 600.0  # a finished job nobody came back for (another process took the row) is then dropped

Enriched = list[tuple[Message, Exception | None]]
"""Each message enriched, or as it was with the exception its enrichment raised."""


def enrich_all(connector: ChannelConnector, messages: Iterable[Message]) -> Enriched:
    """``connector.enrich`` for each message; a failure is returned with the message, not raised."""
    results: Enriched = []
    for message in messages:
        try:
            results.append((connector.enrich(message), None))
        except Exception as exc:
            results.append((message, exc))
    return results


def without_enrichment(message: Message, exc: Exception, attempts: int) -> Message:
    """``message`` as it was before its failed enrichment, marked so the CRM's readers know what is missing.

    Its attachments keep the provider's links; ``extras.enrich_error`` names the failure's class and, when media are
    missing, ``extras.media_note`` says in plain words what happened (the shipped mappings put it under the text).
    """
    extras: dict[str, object] = {**message.extras, "enrich_error": type(exc).__name__}
    missing = [a for a in message.attachments if not a.location.startswith(SCHEME)]
    if missing:
        which = "The attachment" if len(missing) == 1 else f"{len(missing)} attachments"
        extras["media_note"] = (f"{which} could not be downloaded after {attempts} tries ({failure_reason(exc)}); "
                                "the link is the provider's and may need a login there.")
    return message.model_copy(update={"extras": extras})


def downloads_media(messages: Iterable[Message]) -> bool:
    return any(not a.location.startswith(SCHEME) for message in messages for a in message.attachments)


def needs_enrichment(connector: ChannelConnector, messages: list[Message]) -> bool:
    """Whether a row's messages go to the enricher: not when there is no media to download and the connector's
    ``enrich`` does nothing else (it keeps the base one, or declares ``enriches_only_media``). Such a row is
    stored without a hand-off to the enricher's threads."""
    if getattr(connector.enrich, "__func__", None) is ChannelConnector.enrich:
        return False
    return not connector.enriches_only_media or downloads_media(messages)


def senders_of(messages: Iterable[Message]) -> frozenset[tuple[str, str]]:
    """The senders' identifiers: two rows sharing one come from the same customer and keep their order."""
    return frozenset((i.kind.value, i.value) for message in messages for i in message.sender.identifiers)


@dataclass
class Job:
    """One inbox row's enrichment, running or finished."""

    key: int
    senders: frozenset[tuple[str, str]]
    future: Future[Enriched]
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None


class Enricher:
    """Runs enrichment jobs keyed by inbox row id: one job per row, found again when the row comes back."""

    def __init__(self, threads: int) -> None:
        self._pools = {True: ThreadPoolExecutor(threads, thread_name_prefix="enrich-media"),
                       False: ThreadPoolExecutor(threads, thread_name_prefix="enrich")}
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def job(self, key: int, work: Callable[[], Enriched], *, media: bool,
            senders: frozenset[tuple[str, str]]) -> tuple[Job, bool]:
        """The row's job, started now unless one is running or finished already; and whether it is new."""
        with self._lock:
            self._drop_stale()
            job = self._jobs.get(key)
            if job is not None:
                return job, False
            job = Job(key, senders, self._pools[media].submit(work))
            self._jobs[key] = job
        job.future.add_done_callback(lambda _: self._finished(job))
        return job, True

    def running_before(self, key: int) -> frozenset[tuple[str, str]]:
        """The senders of unfinished jobs of rows older than ``key``: their later messages must wait."""
        with self._lock:
            return frozenset(s for job in self._jobs.values() if job.key < key and not job.future.done()
                             for s in job.senders)

    def forget(self, key: int) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def _finished(self, job: Job) -> None:
        job.finished = time.monotonic()

    def _drop_stale(self) -> None:
        now = time.monotonic()
        for key in [k for k, job in self._jobs.items()
                    if job.finished is not None and now - job.finished > KEEP_FINISHED_SECONDS]:
            del self._jobs[key]
