"""Cursors (a poller's position, such as a mailbox's UIDVALIDITY and last UID) and cross-process locks."""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text

from gateway.storage.db import is_sqlite, utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import cursors


class Cursors:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar_one_or_none()
        return dict(value) if value is not None else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        statement = insert_for(self.engine, cursors).values(name=name, value=value, updated_at=utcnow())
        statement = statement.on_conflict_do_update(
            index_elements=["name"], set_={"value": value, "updated_at": utcnow()})
        with self.engine.begin() as conn:
            conn.execute(statement)


@contextmanager
def exclusive(engine: Engine, name: str, lock_dir: Path) -> Iterator[bool]:
    """Try to hold a named lock across processes for the block; yields False when another holder has it.

    PostgreSQL: a session advisory lock. SQLite: a lock file in ``lock_dir`` (one machine by definition).
    """
    if is_sqlite(engine):
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{name.replace('/', '_')}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    key = zlib.crc32(name.encode()) - 2**31
    with engine.connect() as conn:
        acquired = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
        try:
            yield acquired
        finally:
            if acquired:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
