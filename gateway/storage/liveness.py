"""Which lease holders are gone: each worker process holds a lock named after it for as long as it lives.

A lease owner is ``host:pid:thread``; its process part (``host:pid``) names the lock. The operating system (a lock
file on SQLite, whose database is on one machine) or PostgreSQL (a session advisory lock) releases the lock when the
process dies, however it dies, so another worker that can take the lock knows the holder is gone and may take its
rows over at once instead of waiting for their leases to run out. A process that cannot be judged (its lock is
held, or held by a process that reused its pid) counts as alive: its leases then run out as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from gateway.storage.db import is_sqlite

log = logging.getLogger(__name__)
_PG_CLASS = 0x67776B  # advisory lock class ("gwk"): apart from the single-key locks of ``exclusive``


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_of(owner: str) -> str:
    """The ``host:pid`` part of a lease owner ``host:pid:thread``."""
    return owner.rsplit(":", 1)[0]


class Liveness:
    """Holds this process's life lock and tells whether other lease owners' processes are gone."""

    def __init__(self, engine: Engine, lock_dir: Path, process: str | None = None) -> None:
        self.engine = engine
        self.lock_dir = lock_dir
        self.process = process or this_process()
        self._held: Any = None  # the open lock file, or the connection holding the advisory lock

    def hold(self) -> None:
        """Take this process's life lock (held until ``release`` or the process ends)."""
        if self._held is not None:
            return
        if is_sqlite(self.engine):
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            path = self._path(self.process)
            while True:
                handle = open(path, "a")  # noqa: SIM115 (held for the life of the process)
                fcntl.flock(handle, fcntl.LOCK_EX)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                        break  # not a file a checker unlinked between our open and our lock
                handle.close()
            self._held = handle
            return
        conn = self.engine.connect()
        conn.execute(text("SELECT pg_advisory_lock(:c, :k)"), {"c": _PG_CLASS, "k": _key(self.process)})
        conn.commit()
        self._held = conn

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if isinstance(held, Connection):
            with contextlib.suppress(Exception):
                held.execute(text("SELECT pg_advisory_unlock(:c, :k)"), {"c": _PG_CLASS, "k": _key(self.process)})
                held.commit()
            held.close()
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(self.process))
        held.close()

    def is_gone(self, owner: str) -> bool:
        """Whether the process holding a lease as ``owner`` has ended (never true for this process)."""
        process = process_of(owner)
        if process == self.process:
            return False
        try:
            return self._lock_free(process)
        except Exception:
            log.warning("could not tell whether lease owner %s is alive", owner, exc_info=True)
            return False

    def _lock_free(self, process: str) -> bool:
        if is_sqlite(self.engine):
            path = self._path(process)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return True  # never held, or its holder ended and a checker removed it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return True
            finally:
                os.close(fd)
        params = {"c": _PG_CLASS, "k": _key(process)}
        with self.engine.connect() as conn:
            free = bool(conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"), params).scalar())
            if free:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :k)"), params)
            conn.commit()
        return free

    def _path(self, process: str) -> Path:
        return self.lock_dir / f"worker-{process.replace('/', '_')}.lock"


def _key(process: str) -> int:
    return zlib.crc32(process.encode()) - 2**31
