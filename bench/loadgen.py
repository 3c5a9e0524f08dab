"""HTTP load generator for the ingest benchmark: run as its own process, prints one JSON result line.

Requests are signed Twilio SMS webhooks, built and signed before the clock starts, each with a unique MessageSid.
Two modes, both bounded in count and time:

- ``closed``: CONCURRENCY keep-alive connections send back to back for DURATION seconds (max throughput).
- ``open``: requests are due on a fixed schedule (RATE per second for DURATION seconds) whatever the server does;
  latency runs from the scheduled send time to the end of the response, so queueing is not hidden
  (no coordinated omission). A request that finds no idle connection opens a new one.

    python -m bench.loadgen --port 8080 --mode open --rate 500 --duration 10 --run-id 1 \
        --public-url http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "F" * 31 + "1"
AUTH_TOKEN = "bench-twilio-token"
CHANNEL = "sms-main"


def signed_requests(host: str, port: int, public_url: str, run_id: int, count: int,
                    senders: int = 1000) -> list[bytes]:
    """``count`` raw HTTP/1.1 requests, each a correctly signed inbound SMS with a unique MessageSid."""
    validator = RequestValidator(AUTH_TOKEN)
    url = f"{public_url}/hooks/{CHANNEL}"
    out = []
    for i in range(count):
        sid = f"SM{run_id:08x}{i:024x}"
        params = {
            "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
            "Body": f"Hello, my order {i} has not arrived yet", "FromCountry": "US", "To": "+15005550006",
            "ToZip": "", "NumSegments": "1", "MessageSid": sid, "AccountSid": ACCOUNT_SID,
            "From": f"+1415555{i % senders:04d}", "ApiVersion": "2010-04-01",
        }
        signature = validator.compute_signature(url, params)
        body = urlencode(params).encode()
        head = (f"POST /hooks/{CHANNEL} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


@dataclass
class Stats:
    ok: int = 0
    non_2xx: int = 0
    errors: int = 0
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


class Connection:
    """One keep-alive HTTP/1.1 connection; ``send`` returns the status and whether the connection may be reused."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> tuple[int, bool]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        if length:
            await self.reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        self.writer.close()


async def exchange(host: str, port: int, conn: Connection | None, raw: bytes,
                   stats: Stats) -> tuple[int, bool, Connection]:
    """Send on ``conn`` (or a new connection); like HTTP clients do, a kept-alive connection that the server
    closed while it sat idle (closed before any byte of the answer) is replaced once and the request resent."""
    if conn is not None:
        try:
            status, keep = await conn.send(raw)
            return status, keep, conn
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            conn.close()
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            stats.reconnects += 1
    conn = await Connection.open(host, port)
    try:
        status, keep = await conn.send(raw)
    except BaseException:
        conn.close()
        raise
    return status, keep, conn


def _record(stats: Stats, status: int) -> None:
    if 200 <= status < 300:
        stats.ok += 1
    else:
        stats.non_2xx += 1
    stats.statuses[str(status)] = stats.statuses.get(str(status), 0) + 1


async def closed_loop(host: str, port: int, requests: list[bytes], concurrency: int, duration: float) -> dict:
    stats = Stats()
    queue = iter(requests)
    deadline = time.perf_counter() + duration

    async def client() -> None:
        conn: Connection | None = None
        while time.perf_counter() < deadline:
            raw = next(queue, None)
            if raw is None:
                break
            started = time.perf_counter()
            try:
                status, keep, conn = await exchange(host, port, conn, raw, stats)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                stats.errors += 1
                conn = None
                continue
            stats.latencies.append(time.perf_counter() - started)
            _record(stats, status)
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return _summary(stats, elapsed)


async def open_loop(host: str, port: int, requests: list[bytes], rate: float, duration: float,
                    max_connections: int) -> dict:
    stats = Stats()
    total = min(len(requests), int(rate * duration))
    idle: list[Connection] = []
    slots = asyncio.Semaphore(max_connections)
    late_starts: list[float] = []

    async def one(raw: bytes, due: float) -> None:
        async with slots:
            late_starts.append(time.perf_counter() - due)
            conn = idle.pop() if idle else None
            try:
                status, keep, conn = await exchange(host, port, conn, raw, stats)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                stats.errors += 1
                return
            stats.latencies.append(time.perf_counter() - due)
            _record(stats, status)
            if keep:
                idle.append(conn)
            else:
                conn.close()

    tasks = []
    began = time.perf_counter()
    for i in range(total):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i], due)))
    # every request was due by now; give stragglers a bounded time to finish
    _done, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    stats.errors += len(pending)
    elapsed = time.perf_counter() - began
    for conn in idle:
        conn.close()
    result = _summary(stats, elapsed)
    result["target_rate"] = rate
    result["max_send_lag_ms"] = round(max(late_starts, default=0) * 1000, 2)
    result["send_lag_p99_ms"] = round(_percentile(late_starts, 0.99) * 1000, 2)
    return result


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(stats: Stats, elapsed: float) -> dict:
    return {
        "ok": stats.ok, "non_2xx": stats.non_2xx, "errors": stats.errors, "reconnects": stats.reconnects,
        "statuses": stats.statuses,
        "elapsed": round(elapsed, 3), "rps": round(stats.ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(_percentile(stats.latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(stats.latencies, 0.99) * 1000, 2),
        "max_ms": round(max(stats.latencies, default=float("nan")) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-url", required=True)
    parser.add_argument("--mode", choices=["closed", "open"], required=True)
    parser.add_argument("--run-id", type=int, required=True, help="makes this run's MessageSids unique")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--max-requests", type=int, default=30000)
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("load goes to 127.0.0.1 only")
    count = args.max_requests if args.mode == "closed" else int(args.rate * args.duration)
    requests = signed_requests(args.host, args.port, args.public_url, args.run_id, count)
    gc.freeze()  # the prebuilt requests leave the collector's view: no collection pauses that the servers would pay
    if args.mode == "closed":
        result = asyncio.run(closed_loop(args.host, args.port, requests, args.concurrency, args.duration))
    else:
        result = asyncio.run(open_loop(args.host, args.port, requests, args.rate, args.duration,
                                       args.max_connections))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
