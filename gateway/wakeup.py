"""Wake-ups between the processes of one machine: a named pipe per queue under ``data_dir/locks``.

A process that stores rows into a queue (the web process into the inbox, the pipeline into the outbox) writes a
byte to that queue's pipe; a worker process reading the queue gets the byte and its idle threads claim at once,
instead of at their next poll. The poll (``workers.idle_poll_seconds``) stays as the fallback: a wake-up lost (no
reader yet, the pipe full, a process on another machine) costs at most one poll interval. With several readers one
of them is woken, which is enough: any of them can take the rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import stat
import threading
from pathlib import Path

log = logging.getLogger(__name__)
INBOX, OUTBOX = "inbox", "outbox"


class Wakeup:
    """One queue's pipe: ``notify`` on the writing side, ``listen`` on the reading side."""

    def __init__(self, lock_dir: Path, queue: str) -> None:
        self.path = lock_dir / f"wake-{queue}.fifo"
        self._fd: int | None = None
        self._lock = threading.Lock()

    def notify(self) -> None:
        """Tell a reader, if one is waiting, that rows were stored; never blocks and never raises."""
        with self._lock:  # one descriptor per process, written and closed by one thread at a time
            try:
                if self._fd is None:
                    self._fd = _open_fifo(self.path, os.O_WRONLY)
                os.write(self._fd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups not yet read: the reader is awake anyway
            except OSError:  # no pipe yet, no reader (ENXIO), the reader gone (EPIPE): the poll covers it
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def listen(self, on_wake: list[threading.Event], stop: threading.Event) -> threading.Thread | None:
        """Set the events whenever a byte comes, until ``stop``, in a daemon thread; None when the pipe cannot be
        made (the poll then does all the work)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.path, 0o600)
            read_fd = _open_fifo(self.path, os.O_RDONLY)
            try:
                # a writer of our own keeps the pipe open: no end of file each time the last other writer closes
                own_fd = _open_fifo(self.path, os.O_WRONLY)
            except OSError:
                os.close(read_fd)
                raise
        except OSError as exc:
            log.warning("no wake-ups through %s (%s): idle workers poll instead", self.path, exc)
            return None
        thread = threading.Thread(target=self._read, args=(read_fd, own_fd, on_wake, stop),
                                  name=f"wake-{self.path.stem}", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _read(read_fd: int, own_fd: int, on_wake: list[threading.Event], stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        try:
            while not stop.is_set():
                if not poller.poll(500):
                    continue
                try:
                    os.read(read_fd, 4096)  # every wake-up queued so far: one round of claims serves them all
                except BlockingIOError:
                    continue
                for event in on_wake:
                    event.set()
        finally:
            os.close(read_fd)
            os.close(own_fd)


def _open_fifo(path: Path, mode: int) -> int:
    """``path`` opened without blocking, refused unless it is a named pipe (not a link, not a file) owned by us."""
    fd = os.open(path, mode | os.O_NONBLOCK | os.O_NOFOLLOW)
    info = os.fstat(fd)
    if not stat.S_ISFIFO(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise OSError(f"{path} is not a named pipe of this user")
    return fd
