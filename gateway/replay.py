"""Single-use webhook tokens: a signature whose token was already used for another request is a replay.

Some providers sign only a timestamp and a random token, not the content (Mailgun). A captured signature is then
good for any content until its timestamp leaves the replay window, unless each token is taken once. A token is
bound to a digest of the request it first came with: the same request again (a provider's retry, a duplicate
delivery) passes and is stored once by the inbox's own key; anything else under that token is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sqlalchemy import Engine, delete, select, update

from gateway.storage.db import utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import used_tokens

PURGE_EVERY_SECONDS = 60.0
MAX_TOKEN_LENGTH = 255


class UsedTokens(Protocol):
    def use(self, scope: str, token: str, used_for: str, expires_at: datetime) -> bool:
        """Take ``token`` for the request ``used_for`` until ``expires_at``.

        True when it was free, or already taken for this same request; False when another request took it.
        """


class MemoryUsedTokens:
    """Tokens remembered by one process (tests, and connectors used outside the gateway)."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self._taken: dict[tuple[str, str], tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def use(self, scope: str, token: str, used_for: str, expires_at: datetime) -> bool:
        now = self.clock()
        with self._lock:
            for key in [key for key, (_, until) in self._taken.items() if until < now]:
                del self._taken[key]
            taken = self._taken.setdefault((scope, token), (used_for, expires_at))
            return taken[0] == used_for


class DbUsedTokens:
    """Tokens kept in the ``used_tokens`` table, so every web process agrees; the insert is the check."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow,
                 purge_every_seconds: float = PURGE_EVERY_SECONDS) -> None:
        self.engine = engine
        self.clock = clock
        self.purge_every_seconds = purge_every_seconds
        self._next_purge = 0.0
        self._insert = insert_for(engine, used_tokens)

    def use(self, scope: str, token: str, used_for: str, expires_at: datetime) -> bool:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError(f"token longer than {MAX_TOKEN_LENGTH} characters")
        now = self.clock()
        key = (used_tokens.c.scope == scope) & (used_tokens.c.token == token)
        with self.engine.begin() as conn:
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + self.purge_every_seconds
                conn.execute(delete(used_tokens).where(used_tokens.c.expires_at < now))
            for _ in range(2):  # a row purged by another process between our insert and our read: insert again
                inserted = conn.execute(self._insert.values(
                    scope=scope, token=token, used_for=used_for, expires_at=expires_at,
                ).on_conflict_do_nothing(index_elements=["scope", "token"]).returning(used_tokens.c.token)).first()
                if inserted is not None:
                    return True
                row = conn.execute(select(used_tokens.c.used_for, used_tokens.c.expires_at).where(key)).first()
                if row is None:
                    continue
                if row.used_for == used_for:
                    return True
                if row.expires_at < now:  # left over from long ago, not yet purged: free again
                    conn.execute(update(used_tokens).where(key).values(used_for=used_for, expires_at=expires_at))
                    return True
                return False
        return False
