"""Request budgets shared by every process: a token bucket kept in the database.

A CRM's per-minute limit holds for the whole account, so all workers draw from one bucket. A ``Retry-After`` from
the CRM blocks the bucket for everyone until it passes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from sqlalchemy import Engine, or_, select, update

from gateway.errors import RetryableError
from gateway.storage.db import is_sqlite, utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import rate_limits

MAX_WAIT_SECONDS = 20.0
# A full bucket holds 3 seconds of budget: a minute that starts full sends at most 105 % of the rate, and the
# rate itself is set under the CRM's limit (Zendesk: 95 %), so a window never exceeds the limit.
BURST_SECONDS = 3.0
TOKEN_EPSILON = 1e-9


class RateLimiter(Protocol):
    def acquire(self, cost: int = 1) -> None:
        """Wait for ``cost`` requests of budget; raise RetryableError when the wait would be long."""

    def block(self, seconds: float) -> None:
        """Nobody sends for ``seconds`` (the CRM answered 429 with Retry-After)."""


class MemoryRateLimiter:
    """A token bucket for one process (tests, and connectors used outside the gateway)."""

    def __init__(self, per_minute: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst) if burst is not None else max(1.0, self.rate * BURST_SECONDS)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.blocked_until = 0.0
        self.sleep = sleep
        self._lock = threading.Lock()

    def acquire(self, cost: int = 1) -> None:
        while True:
            wait = self.try_acquire(cost)
            if not wait:
                return
            if wait > MAX_WAIT_SECONDS:
                raise RetryableError(f"rate limit: next request in {wait:.0f}s", code="rate_limited", retry_after=wait,
                                     uncertain=False, outage=True)  # nothing was sent
            self.sleep(wait)

    def try_acquire(self, cost: int = 1) -> float:
        """Take ``cost`` without waiting: 0.0 when taken, otherwise the seconds until it could be."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            wait = max(self.blocked_until - now, 0.0)
            # a bucket a rounding error short of a token is full: float sums of small refills fall just under
            if not wait and self.tokens >= cost - TOKEN_EPSILON:
                self.tokens = max(self.tokens - cost, 0.0)
                return 0.0
            return wait or (cost - self.tokens) / self.rate

    def block(self, seconds: float) -> None:
        with self._lock:
            self.blocked_until = max(self.blocked_until, self.clock() + seconds)


class DbRateLimiter:
    """The same bucket, kept in the ``rate_limits`` table so every process shares it."""

    def __init__(self, engine: Engine, name: str, per_minute: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.engine = engine
        self.name = name
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.sleep = sleep
        self._created = False

    def _ensure_row(self) -> None:
        if self._created:
            return
        statement = insert_for(self.engine, rate_limits).values(
            name=self.name, tokens=self.capacity, updated_at=utcnow(), blocked_until=None
        ).on_conflict_do_nothing(index_elements=["name"])
        with self.engine.begin() as conn:
            conn.execute(statement)
        self._created = True

    def _take(self, cost: int) -> float:
        self._ensure_row()
        query = select(rate_limits).where(rate_limits.c.name == self.name)
        if not is_sqlite(self.engine):
            query = query.with_for_update()
        with self.engine.begin() as conn:
            row = conn.execute(query).one()
            now = utcnow()
            if row.blocked_until is not None and row.blocked_until > now:
                return (row.blocked_until - now).total_seconds()
            tokens = min(self.capacity, row.tokens + (now - row.updated_at).total_seconds() * self.rate)
            if tokens >= cost:
                conn.execute(update(rate_limits).where(rate_limits.c.name == self.name).values(
                    tokens=tokens - cost, updated_at=now))
                return 0.0
            return (cost - tokens) / self.rate

    def acquire(self, cost: int = 1) -> None:
        while True:
            wait = self._take(cost)
            if wait <= 0:
                return
            if wait > MAX_WAIT_SECONDS:
                raise RetryableError(f"rate limit: next request in {wait:.0f}s", code="rate_limited", retry_after=wait,
                                     uncertain=False, outage=True)  # nothing was sent
            self.sleep(wait)

    def block(self, seconds: float) -> None:
        self._ensure_row()
        until = utcnow() + timedelta(seconds=seconds)
        with self.engine.begin() as conn:
            conn.execute(update(rate_limits).where(
                rate_limits.c.name == self.name,
                or_(rate_limits.c.blocked_until.is_(None), rate_limits.c.blocked_until < until)).values(
                blocked_until=until, tokens=0.0, updated_at=utcnow()))
