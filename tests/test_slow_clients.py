"""Slow clients against the real web server (``gateway serve``): more of them than threads must not starve anyone.

A client that sends its headers, or its headers and part of a body, and then waits, must not hold one of the
server's threads: the request is read in full by the server's event loop before a thread takes it. A request that
does not arrive in full within ``server.read_timeout_seconds`` is answered 408 and closed; one too large, or one
that would make the requests being read hold too much memory together, is refused at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.plugins import CRM_HOOK_MAX_BYTES
from tests.helpers import (
    TWILIO_SID,
    TWILIO_TOKEN,
    GatewayProcess,
    free_port,
    message_sid,
    send_twilio,
    twilio_params,
    wait_ready,
    write_gateway_config,
)

THREADS = 2
FAST_SECONDS = 10.0  # a busy 2-core machine answers in well under a second; a starved request waits for ever
BODY_START, BODY_REST = b"Body=only+part+of+it", b"&Rest=arrives+at+last"
PARTIAL_BODY = (b"POST /hooks/sms-main HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(BODY_START + BODY_REST), BODY_START))
# the largest body an endpoint of this config takes (a CRM reply hook): the server reads no more of one request
LIMIT = CRM_HOOK_MAX_BYTES
PARTIAL_HEADERS = b"POST /hooks/sms-main HTTP/1.1\r\nHost: gateway\r\nX-Slow: "


def start(tmp_path: Path, read_timeout: float) -> tuple[str, GatewayProcess]:
    port = free_port()
    config = write_gateway_config(tmp_path, storage_url=f"sqlite:///{tmp_path / 'gateway.db'}", port=port,
                                  crms="{trial: {type: jsonl, path: out/crm.jsonl}}",
                                  routes="[{from: [sms-main], to: trial}]", threads=THREADS,
                                  server=f", read_timeout_seconds: {read_timeout}")
    proc = GatewayProcess(["serve", "-c", str(config)], tmp_path / "serve.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc)
    except BaseException:
        proc.stop()
        raise
    return base_url, proc


@pytest.fixture
def patient_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A server with two threads that waits two minutes for a slow request: far longer than any test here."""
    base_url, proc = start(tmp_path, read_timeout=120)
    try:
        yield base_url, int(base_url.rsplit(":", 1)[1])
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def connect(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=FAST_SECONDS)
    sock.sendall(data)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body), read within ``FAST_SECONDS``."""
    sock.settimeout(FAST_SECONDS)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(4096)
    return data


def still_waiting(sock: socket.socket) -> bool:
    """The connection is open and nothing has been answered on it."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def test_slow_clients_beyond_the_thread_count_never_starve_a_fast_one(patient_server: tuple[str, int]) -> None:
    base_url, port = patient_server
    slow = [connect(port, PARTIAL_BODY if n % 2 else PARTIAL_HEADERS) for n in range(3 * THREADS)]
    kept_alive = connect(port, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert read_response(kept_alive).startswith(b"HTTP/1.1 200")
    kept_alive.sendall(PARTIAL_BODY)  # its second request, on the same connection, stalls too
    slow.append(kept_alive)
    try:
        started = time.monotonic()
        assert requests.get(f"{base_url}/healthz", timeout=FAST_SECONDS).status_code == 200
        assert requests.get(f"{base_url}/readyz", timeout=FAST_SECONDS).status_code == 200
        params = twilio_params(message_sid(1), "+14155550100", "still here?", TWILIO_SID)
        assert send_twilio(base_url, base_url, "sms-main", TWILIO_TOKEN, params).status_code == 200
        assert time.monotonic() - started < FAST_SECONDS
        assert all(still_waiting(sock) for sock in slow)  # served beside them, not after a timeout cut them off

        slow[1].sendall(BODY_REST)  # a slow body completed at last is then answered like any other
        assert read_response(slow[1]).startswith(b"HTTP/1.1 401")  # unsigned
        slow[0].sendall(b"1\r\nContent-Length: 0\r\n\r\n")
        assert read_response(slow[0]).startswith(b"HTTP/1.1 401")
    finally:
        for sock in slow:
            sock.close()


def test_requests_too_slow_too_large_or_too_many_are_refused_without_waiting(tmp_path: Path) -> None:
    base_url, proc = start(tmp_path, read_timeout=5)
    port = int(base_url.rsplit(":", 1)[1])
    try:
        stalled = connect(port, PARTIAL_BODY)
        stalled.settimeout(FAST_SECONDS)
        answer = stalled.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"Connection: close" in answer
        while stalled.recv(4096):
            pass  # then closed
        stalled.close()

        huge = connect(port, b"POST /hooks/sms-main HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n\r\n"
                       % (LIMIT + 1))
        huge.settimeout(FAST_SECONDS)
        assert huge.recv(4096).startswith(b"HTTP/1.1 413 ")  # at once, without waiting for a body never sent
        huge.close()

        # requests being read hold at most 32 of the largest bodies (32 x 256 KiB here) together: the rest get 503
        nearly = (b"POST /hooks/sms-main HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n\r\n" % LIMIT
                  + b"x" * (LIMIT - 1000))
        many = [connect(port, nearly) for _ in range(40)]
        many[-1].settimeout(FAST_SECONDS)
        assert many[-1].recv(4096).startswith(b"HTTP/1.1 503 ")
        assert requests.get(f"{base_url}/healthz", timeout=FAST_SECONDS).status_code == 200
        many[0].settimeout(FAST_SECONDS)
        assert many[0].recv(4096).startswith(b"HTTP/1.1 408 ")  # the first ones were let be, until their deadline
        for sock in many:
            sock.close()
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
