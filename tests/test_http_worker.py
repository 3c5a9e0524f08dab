"""The web server's request scan: when a request buffered by the event loop is whole and can go to a thread.

A request goes to a thread only once nothing more has to be read for it; a thread must never be the one waiting on
a slow client. (The server itself, with slow clients, is tested in ``test_slow_clients``.)
"""

from __future__ import annotations

import pytest

from gateway.http_worker import MAX_HEADER_BYTES, RequestScan, Verdict

HEAD = b"POST /hooks/sms-main HTTP/1.1\r\nHost: gateway\r\n"


def feed_bytewise(request: bytes, max_body_bytes: int = 1000) -> list[Verdict]:
    """The verdict after each byte, as if the request arrived one byte at a time."""
    scan = RequestScan(max_body_bytes)
    return [scan.feed(request[:n]) for n in range(1, len(request) + 1)]


def test_a_request_with_a_length_is_ready_with_its_last_byte_and_not_before() -> None:
    request = HEAD + b"Content-Length: 11\r\n\r\nhello world"
    verdicts = feed_bytewise(request)
    assert verdicts[-1] is Verdict.READY
    assert set(verdicts[:-1]) == {Verdict.MORE}


def test_a_request_without_a_body_is_ready_with_its_header_block() -> None:
    verdicts = feed_bytewise(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert verdicts[-1] is Verdict.READY
    assert set(verdicts[:-1]) == {Verdict.MORE}


def test_a_chunked_body_is_ready_after_its_last_chunk_and_trailers() -> None:
    request = (HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    verdicts = feed_bytewise(request)
    assert verdicts[-1] is Verdict.READY
    assert set(verdicts[:-1]) == {Verdict.MORE}
    assert feed_bytewise(HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")[-1] is Verdict.READY


@pytest.mark.parametrize("request_bytes", [
    HEAD + b"Content-Length: 1001\r\n\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n1\r\n",
])
def test_a_body_over_the_limit_is_refused_as_soon_as_it_is_announced(request_bytes: bytes) -> None:
    assert RequestScan(1000).feed(request_bytes) is Verdict.BODY_TOO_LARGE


def test_a_header_block_over_64_kib_is_refused_without_waiting_for_its_end() -> None:
    assert RequestScan(1000).feed(HEAD + b"X-Long: " + b"a" * MAX_HEADER_BYTES) is Verdict.HEADERS_TOO_LARGE


@pytest.mark.parametrize("chunks", [b"zz\r\nhello\r\n", b"0x5\r\nhello\r\n", b"5\r\nhelloXX", b"5;=\r\nhello\r\n"])
def test_broken_chunk_framing_is_a_bad_request(chunks: bytes) -> None:
    assert RequestScan(1000).feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks) is Verdict.BAD_REQUEST


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: five\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
def test_a_header_block_gunicorn_refuses_goes_on_at_once_to_be_refused(headers: bytes) -> None:
    assert RequestScan(1000).feed(HEAD + headers + b"\r\n") is Verdict.READY


def test_expect_100_continue_is_noted_for_http_11_only() -> None:
    scan = RequestScan(1000)
    assert scan.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n") is Verdict.MORE
    assert scan.expects_continue
    old = RequestScan(1000)
    old.feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert not old.expects_continue
