"""Group commit for the web process: concurrent webhook requests share one transaction and one fsync.

Each request still answers only after the commit that holds its rows; under light load a batch is one request, so
nothing waits for company, and under heavy load the requests that arrived during one commit go in the next.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from gateway.records import InboxItem
from gateway.storage.queues import InboxWrite, Queues, StoredCount

log = logging.getLogger(__name__)
MAX_BATCH = 128
TIMEOUT_SECONDS = 30.0


class InboxBatcher:
    """A writer thread that commits every queued request's rows together."""

    def __init__(self, queues: Queues, max_batch: int = MAX_BATCH,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.queues = queues
        self.max_batch = max_batch
        self.on_stored = on_stored  # after a commit that stored rows: wake the pipeline
        self._pending: queue.SimpleQueue[tuple[InboxWrite, Future[StoredCount]]] = queue.SimpleQueue()
        self._committing = threading.Lock()  # held by whoever is writing to the inbox in this process
        self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self._thread.start()

    def store(self, connector: str, items: Sequence[InboxItem], headers: dict[str, str],
              public_url: str) -> StoredCount:
        """Returns after the transaction holding these items has committed; raises if it failed.

        When nothing else is being committed the request writes at once, in its own thread; otherwise it joins
        the batch the writer thread commits next.
        """
        write = InboxWrite(connector, items, headers, public_url)
        if self._pending.empty() and self._committing.acquire(blocking=False):  # none waiting: no overtaking
            try:
                counted = self.queues.store_inbox_batch([write])[0]
            finally:
                self._committing.release()
            self._stored([counted])
            return counted
        future: Future[StoredCount] = Future()
        self._pending.put((write, future))
        return future.result(timeout=TIMEOUT_SECONDS)

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            with self._committing:
                self._commit(first)

    def _commit(self, first: tuple[InboxWrite, Future[StoredCount]]) -> None:
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                batch.append(self._pending.get_nowait())
            except queue.Empty:
                break
        try:
            counts = self.queues.store_inbox_batch([write for write, _ in batch])
        except Exception:
            self._one_by_one(batch)  # one bad request must not fail the others that shared its commit
            return
        self._stored(counts)
        for (_, future), counted in zip(batch, counts, strict=True):
            future.set_result(counted)

    def _one_by_one(self, batch: list[tuple[InboxWrite, Future[StoredCount]]]) -> None:
        for write, future in batch:
            try:
                counted = self.queues.store_inbox_batch([write])[0]
            except Exception as exc:
                future.set_exception(exc)
                continue
            self._stored([counted])
            future.set_result(counted)

    def _stored(self, counts: Sequence[StoredCount]) -> None:
        if self.on_stored is not None and any(counted.stored for counted in counts):
            self.on_stored()
