"""gunicorn's threaded worker, with every request read in full by its event loop before a thread takes it.

Stock ``gthread`` hands a connection to a thread as soon as its first bytes arrive, and the thread then blocks
reading the rest of the headers and the body: eight clients that send headers and part of a body hold eight threads,
and every other request, ``/healthz`` included, waits behind them. gunicorn's documentation answers this with a
buffering proxy in front. Here the buffering is done by the worker's own event loop (the main thread, which already
polls every socket): it reads each request without blocking until the header block and the whole body (of the
announced length, or up to the last chunk) are in memory, and only then passes the connection to a thread, whose
parser finds everything in its buffer. A slow client costs a socket and its bytes so far, never a thread.

A request not in full within ``read_seconds`` is answered 408 and closed; one announcing a body over
``max_body_bytes`` is answered 413 at once, a header block over 64 KiB 431, and broken chunk framing 400; a request
whose bytes would take all requests being read over ``BUFFERED_BODIES`` of the largest bodies gets 503. Anything
else odd in the header block (a malformed length, an unknown transfer coding) is passed on as soon as the block is
in, for gunicorn to refuse.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.http.body import CHUNK_EXT_RE
from gunicorn.workers.gthread import ThreadWorker

MAX_HEADER_BYTES = 64 * 1024
BUFFERED_BODIES = 32  # requests being read may hold this many of the largest bodies together, then get 503
MAX_CHUNK_LINE = 8190  # gunicorn's own limit on a chunk-size line
_RECV_BYTES = 256 * 1024
_RECV_PER_EVENT = 4  # reads per readiness event, so one fast sender cannot hold up the loop
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(" + CHUNK_EXT_RE.pattern + rb")")


class Verdict(Enum):
    MORE = "more"  # wait for more bytes
    READY = "ready"  # a whole request is buffered (or gunicorn can refuse it from what is buffered)
    BAD_REQUEST = "400 Bad Request"
    HEADERS_TOO_LARGE = "431 Request Header Fields Too Large"
    BUSY = "503 Service Unavailable"  # every request being read together holds too much memory
    BODY_TOO_LARGE = "413 Content Too Large"


@dataclass
class RequestScan:
    """How far a buffered request has arrived; fed the growing buffer again and again, it resumes where it left."""

    max_body_bytes: int
    body_start: int = -1  # offset after the header block, once it is in
    length: int | None = None  # Content-Length of a body not chunked
    chunked: bool = False
    next_chunk: int = 0  # offset of the next chunk-size line
    chunk_total: int = 0
    trailers: bool = False
    expects_continue: bool = False
    _searched: int = 0

    def feed(self, data: bytes | bytearray) -> Verdict:
        if self.body_start < 0:
            end = data.find(b"\r\n\r\n", max(0, self._searched - 3))
            self._searched = len(data)
            if end < 0:
                return Verdict.HEADERS_TOO_LARGE if len(data) > MAX_HEADER_BYTES else Verdict.MORE
            if end > MAX_HEADER_BYTES:
                return Verdict.HEADERS_TOO_LARGE
            self.body_start = self.next_chunk = end + 4
            verdict = self._headers(bytes(data[:end]))
            if verdict is not Verdict.MORE:
                return verdict
        if self.chunked:
            return self._chunks(data)
        assert self.length is not None
        return Verdict.READY if len(data) - self.body_start >= self.length else Verdict.MORE

    def _headers(self, block: bytes) -> Verdict:
        lines = block.split(b"\r\n")
        http_11 = lines[0].rstrip().endswith(b"HTTP/1.1") if lines else False
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings += [coding.strip().lower() for coding in value.split(b",")]
            elif name == b"expect" and value.lower() == b"100-continue" and http_11:
                self.expects_continue = True
        if codings:
            if codings[-1] != b"chunked":
                return Verdict.READY  # gunicorn refuses the coding from the header block alone
            self.chunked = True
            return Verdict.MORE
        if len(set(lengths)) > 1 or (lengths and not lengths[0].isdigit()):
            return Verdict.READY  # ambiguous or malformed: gunicorn answers 400 from the header block alone
        self.length = int(lengths[0]) if lengths else 0
        return Verdict.BODY_TOO_LARGE if self.length > self.max_body_bytes else Verdict.MORE

    def _chunks(self, data: bytes | bytearray) -> Verdict:
        while True:
            pos = self.next_chunk
            if self.trailers:
                if data[pos:pos + 2] == b"\r\n" or data.find(b"\r\n\r\n", pos) >= 0:
                    return Verdict.READY
                return Verdict.HEADERS_TOO_LARGE if len(data) - pos > MAX_HEADER_BYTES else Verdict.MORE
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                return Verdict.BAD_REQUEST if len(data) - pos > MAX_CHUNK_LINE else Verdict.MORE
            line = _CHUNK_LINE.fullmatch(bytes(data[pos:line_end]))
            if line is None:
                return Verdict.BAD_REQUEST
            size = int(line[1], 16)
            if size == 0:
                self.trailers = True
                self.next_chunk = line_end + 2
                continue
            if self.chunk_total + size > self.max_body_bytes:
                return Verdict.BODY_TOO_LARGE
            end = line_end + 2 + size + 2
            if len(data) < end:
                return Verdict.MORE
            if data[end - 2:end] != b"\r\n":
                return Verdict.BAD_REQUEST
            self.chunk_total += size
            self.next_chunk = end


@dataclass
class _Reading:
    scan: RequestScan
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    continued: bool = False


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """A ``gthread`` worker whose threads only ever see requests that have arrived in full."""

    read_seconds: float = 30.0
    max_body_bytes: int = 5 * 1024 * 1024
    max_buffered_bytes: int = BUFFERED_BODIES * 5 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: OrderedDict[Any, _Reading] = OrderedDict()  # oldest first: deadlines come in this order
        self._buffered = 0  # bytes held by all requests being read

    def enqueue_req(self, conn: Any) -> None:
        """Called by the event loop for a new connection, a kept-alive one with a request coming, or one whose
        previous request left bytes behind: read the request in full before a thread takes it."""
        if self.cfg.is_ssl or conn.is_http2:
            super().enqueue_req(conn)
            return
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        reading = _Reading(RequestScan(self.max_body_bytes), time.monotonic() + self.read_seconds)
        reading.data += conn.parser.unreader.take_buffered()
        self._buffered += len(reading.data)
        self._reading[conn] = reading
        if self._guarded(conn, reading, registered=False):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        reading = self._reading.get(conn)
        if reading is not None:
            self._guarded(conn, reading, registered=True)

    def _guarded(self, conn: Any, reading: _Reading, *, registered: bool) -> bool:
        """``_advance``; whatever goes wrong with one connection ends that connection, never the event loop."""
        try:
            return self._advance(conn, reading, registered=registered)
        except Exception:
            self.log.exception("error reading a request from %s; connection closed", conn.client)
            if conn in self._reading:
                self._drop(conn, registered=True)
            return False

    def _advance(self, conn: Any, reading: _Reading, *, registered: bool) -> bool:
        """Take what has arrived; returns True while the request is still incomplete (and the connection ours)."""
        verdict = reading.scan.feed(reading.data)
        conn.sock.setblocking(False)
        for _ in range(_RECV_PER_EVENT):
            if verdict is not Verdict.MORE:
                break
            try:
                chunk = conn.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:  # the client went away (or reset) before its request was complete
                self._drop(conn, registered)
                return False
            reading.data += chunk
            self._buffered += len(chunk)
            verdict = reading.scan.feed(reading.data)
            if verdict is Verdict.MORE and self._buffered > self.max_buffered_bytes:
                verdict = Verdict.BUSY
        if verdict is Verdict.MORE:
            if reading.scan.expects_continue and reading.scan.body_start >= 0 and not reading.continued:
                reading.continued = True  # the client waits for this before it sends the body
                self._send(conn, _CONTINUE)
            return True
        if verdict is not Verdict.READY:
            self._refuse(conn, verdict.value, registered)
            return False
        self._forget(conn)
        if registered:
            self.poller.unregister(conn.sock)
        conn.parser.unreader.unread(bytes(reading.data))
        conn.data_ready = True  # the thread must not wait for the socket: the request is in the parser's buffer
        super().enqueue_req(conn)
        return False

    def murder_pending(self) -> None:
        """Also end requests past their deadline (408; a connection that never sent a byte is just closed), and,
        when stopping, connections still silent."""
        super().murder_pending()
        now = time.monotonic()
        for conn, reading in list(self._reading.items()):
            if reading.deadline <= now and reading.data:
                self._refuse(conn, "408 Request Timeout", registered=True)
            elif reading.deadline <= now or (not self.alive and not reading.data):
                self._drop(conn, registered=True)
            elif self.alive:
                break

    def _refuse(self, conn: Any, status: str, registered: bool) -> None:
        reason = status.split(" ", 1)[1].lower()
        body = f"{reason}\n".encode()
        retry = "Retry-After: 5\r\n" if status.startswith("503") else ""
        self._send(conn, f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
                         f"{len(body)}\r\n{retry}Connection: close\r\n\r\n".encode() + body)
        self._drop(conn, registered)

    @staticmethod
    def _send(conn: Any, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a few bytes on a non-blocking socket: whatever fits, as a courtesy
            conn.sock.send(data)

    def _forget(self, conn: Any) -> None:
        reading = self._reading.pop(conn, None)
        if reading is not None:
            self._buffered -= len(reading.data)

    def _drop(self, conn: Any, registered: bool) -> None:
        self._forget(conn)
        if registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()


def worker_class(read_seconds: float, max_body_bytes: int) -> type[BufferingThreadWorker]:
    """The worker class gunicorn is given, with this gateway's read deadline and body limit."""
    return type("GatewayWorker", (BufferingThreadWorker,),
                {"read_seconds": read_seconds, "max_body_bytes": max_body_bytes,
                 "max_buffered_bytes": BUFFERED_BODIES * max_body_bytes, "__module__": __name__})
