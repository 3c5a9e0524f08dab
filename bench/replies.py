"""Agent replies benchmark: a CRM's reply event in, the provider's API called, through the real gateway.

``gateway run`` (web server and workers, SQLite, default settings) serves a Twilio channel whose API is the local
fake Twilio (``tests/fake_twilio.py``, timing every message it is handed) and the jsonl trial CRM taking signed
replies. Customers first text in (signed Twilio webhooks) so each has a conversation; then:

- **latency**: agent replies posted to ``/crm-hooks/trial`` at a steady rate, well under the sending limits; for each,
  the time from the reply webhook's arrival (our client's send) to the fake Twilio receiving the Messages call.
  Reported p50/p99 per round, median of rounds (target p99 < 1 s).
- **sustained**: a burst of replies to customers of a few business numbers, each number held to its default budget
  (``send_per_minute`` 60); reported replies/s achieved and the most any number sent in one second and in any
  sliding 60 s window, against the budget (a full bucket holds 3 s of it). Then the same burst with the budget
  raised far out of the way: the gateway's own capacity.

Checked each time: every reply reached the fake exactly once.

    .venv/bin/python -m bench.replies            # about 3 minutes; prints the figures
    .venv/bin/python -m bench.replies --doc      # also rewrites its section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from pydantic import SecretStr
from sqlalchemy import create_engine, func, select

from bench.docs import write_section
from bench.stalls import probing
from gateway import signed_replies
from gateway.storage.tables import conversations, messages
from tests.fake_twilio import FakeTwilio
from tests.helpers import GatewayProcess, free_port, send_twilio, twilio_params, wait_for, wait_ready

ACCOUNT = "AC" + "E" * 31 + "2"
TOKEN = "bench-twilio-token"
REPLY_SECRET = "bench-reply-secret"
P99_TARGET_MS = 1000.0


class TimedTwilio(FakeTwilio):
    """The fake Twilio, noting when each message arrived (monotonic clock, this process)."""

    def __init__(self) -> None:
        super().__init__(ACCOUNT, TOKEN)
        self.arrivals: dict[str, float] = {}  # body -> arrival
        self.arrivals_by_sender: dict[str, list[float]] = defaultdict(list)

    def _create(self, base: str, form: dict[str, list[str]]) -> Any:
        now = time.monotonic()
        answer = super()._create(base, form)
        if answer[0] == 201:
            self.arrivals[form["Body"][0]] = now
            self.arrivals_by_sender[form["From"][0]].append(now)
        return answer


def _config(folder: Path, port: int, twilio_url: str, send_per_minute: float) -> Path:
    path = folder / "config.yaml"
    path.write_text(f"""\
storage: {{url: "sqlite:///{folder / 'gateway.db'}"}}
server: {{listen: "127.0.0.1:{port}", public_url: "http://127.0.0.1:{port}"}}
logging: {{level: WARNING}}
channels:
  sms-main: {{type: twilio, account_sid: "{ACCOUNT}", auth_token: "{TOKEN}", api_base_url: "{twilio_url}",
             send_per_minute: {send_per_minute}}}
crms:
  trial: {{type: jsonl, path: "{folder / 'crm.jsonl'}", reply_secret: "{REPLY_SECRET}"}}
routes:
  - {{from: [sms-main], to: trial}}
""", encoding="utf-8")
    return path


def _business(n: int) -> str:
    return f"+1500555{n:04d}"


def _customer(n: int) -> str:
    return f"+1415666{n:04d}"


class Gateway:
    """One gateway run with its fake Twilio, its customers and their conversations."""

    def __init__(self, folder: Path, customers: int, numbers: int, send_per_minute: float) -> None:
        self.fake = TimedTwilio().start()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = _config(folder, self.port, self.fake.url, send_per_minute)
        self.proc = GatewayProcess(["run", "-c", str(self.config)], folder / "gateway.log")
        wait_ready(self.base, self.proc, timeout=60)
        self.engine = create_engine(f"sqlite:///{folder / 'gateway.db'}")
        for n in range(customers):
            params = twilio_params(f"SM{n:032x}", _customer(n), f"question {n}", ACCOUNT, to=_business(n % numbers))
            send_twilio(self.base, self.base, "sms-main", TOKEN, params).raise_for_status()
        wait_for(lambda: self._count(conversations) == customers, 120, "every customer's conversation")
        with self.engine.connect() as conn:
            self.conversations = {row.data["sender"]["identifiers"][0]["value"]: row.conversation_id
                                  for row in conn.execute(select(messages.c.data, messages.c.conversation_id))}
        self.session = requests.Session()
        self.posted: dict[str, float] = {}

    def _count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

    def reply(self, phone: str, text: str) -> None:
        request = signed_replies.sample(SecretStr(REPLY_SECRET), conversation_id=self.conversations[phone], text=text,
                                        public_url=f"{self.base}/crm-hooks/trial")
        self.posted[text] = time.monotonic()
        answer = self.session.post(f"{self.base}/crm-hooks/trial", data=request.body,
                                   headers=dict(request.headers), timeout=10)
        answer.raise_for_status()

    def wait_sent(self, expected: int, timeout: float) -> None:
        wait_for(lambda: len(self.fake.arrivals) >= expected, timeout, f"{expected} replies at Twilio", interval=0.05)
        duplicates = [to for to, n in self.fake.sent_counts().items() if n > len(self._replies_to(to))]
        assert not duplicates, f"replies sent twice to {duplicates[:5]}"

    def _replies_to(self, to: str) -> list[str]:
        return [text for text in self.posted if text.startswith(f"reply to {to} ")]

    def close(self) -> None:
        self.proc.stop()
        self.fake.stop()
        self.engine.dispose()
        self.session.close()


def latency_rounds(gateway: Gateway, rounds: int, per_round: int, rate: float) -> list[dict[str, Any]]:
    phones = sorted(gateway.conversations)
    results = []
    for round_no in range(rounds):
        texts = []
        with probing(str(gateway.config.parent)) as stalls:
            start = time.monotonic()
            for n in range(per_round):
                due = start + n / rate
                time.sleep(max(0.0, due - time.monotonic()))  # pacing the load, not synchronising a test
                phone = phones[(round_no * per_round + n) % len(phones)]
                text = f"reply to {phone} r{round_no} n{n}"
                gateway.reply(phone, text)
                texts.append(text)
            gateway.wait_sent(len(gateway.posted), 120)
        latencies = sorted((gateway.fake.arrivals[t] - gateway.posted[t]) * 1000 for t in texts)
        results.append({"replies": per_round, "rate": rate, "p50_ms": round(_pct(latencies, 0.5), 1),
                        "p99_ms": round(_pct(latencies, 0.99), 1), "max_ms": round(latencies[-1], 1),
                        "stall_max_ms": stalls.get("stall_max_ms"), "fsync_max_ms": stalls.get("fsync_max_ms")})
    return results


def sustained(gateway: Gateway, replies: int, senders: int) -> dict[str, Any]:
    phones = sorted(gateway.conversations)
    before = {sender: len(times) for sender, times in gateway.fake.arrivals_by_sender.items()}
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: gateway.reply(phones[n % len(phones)], f"reply to {phones[n % len(phones)]} "
                                                                        f"burst {n}"), range(replies)))
    gateway.wait_sent(len(gateway.posted), 600)
    arrivals = {sender: times[before.get(sender, 0):] for sender, times in gateway.fake.arrivals_by_sender.items()}
    end = max(t for times in arrivals.values() for t in times)
    per_second = max(max(Counter(int(t - start) for t in times).values()) for times in arrivals.values() if times)
    per_minute = max(_max_in_window(times, 60.0) for times in arrivals.values() if times)
    return {"replies": replies, "senders": senders, "seconds": round(end - start, 1),
            "replies_per_s": round(replies / (end - start), 1), "max_per_sender_per_s": per_second,
            "max_per_sender_in_60s": per_minute}


def _max_in_window(times: list[float], window: float) -> int:
    ordered, best, low = sorted(times), 0, 0
    for high, moment in enumerate(ordered):
        while moment - ordered[low] > window:
            low += 1
        best = max(best, high - low + 1)
    return best


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"numbers": args.numbers}
    with tempfile.TemporaryDirectory(prefix="bench-replies-") as tmp:
        folder = Path(tmp, "limited")
        folder.mkdir()
        gateway = Gateway(folder, customers=args.customers, numbers=args.numbers, send_per_minute=60)
        try:
            figures["latency"] = latency_rounds(gateway, args.rounds, args.per_round, args.rate)
            figures["limited"] = sustained(gateway, args.burst, args.numbers)
            figures["limited"]["send_per_minute"] = 60
        finally:
            gateway.close()
        folder = Path(tmp, "unlimited")
        folder.mkdir()
        gateway = Gateway(folder, customers=args.customers, numbers=args.numbers, send_per_minute=600_000)
        try:
            figures["unlimited"] = sustained(gateway, args.burst, args.numbers)
            figures["unlimited"]["send_per_minute"] = 600_000
        finally:
            gateway.close()
    return figures


def render(figures: dict[str, Any], command: str) -> str:
    rounds = figures["latency"]
    p50 = statistics.median(r["p50_ms"] for r in rounds)
    p99 = statistics.median(r["p99_ms"] for r in rounds)
    limited, unlimited = figures["limited"], figures["unlimited"]
    lines = [
        "## Agent replies",
        "",
        "From an agent's reply arriving at `/crm-hooks/trial` to the provider's API receiving the message, through",
        "`gateway run` (one web process of eight threads, one send thread, SQLite) and the local fake Twilio.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- Command: `{command}`",
        "",
        f"### Latency ({rounds[0]['replies']} replies a round at {rounds[0]['rate']:g}/s, spread over "
        f"{figures['numbers']} business numbers)",
        "",
        "| round | p50 ms | p99 ms | max ms | worst CPU stall ms | slowest fsync ms |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {i + 1} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['stall_max_ms']} | {r['fsync_max_ms']} |"
          for i, r in enumerate(rounds)],
        "",
        f"Median of rounds: p50 **{p50:.1f} ms**, p99 **{p99:.1f} ms** (target p99 < {P99_TARGET_MS:.0f} ms: "
        f"{'met' if p99 < P99_TARGET_MS else '**missed**'}).",
        "",
        "### Sustained replies",
        "",
        "| sending budget | replies | business numbers | seconds | replies/s | most per number in 1 s | "
        "most per number in any 60 s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {limited['send_per_minute']}/min per number (default) | {limited['replies']} | {limited['senders']} | "
        f"{limited['seconds']} | {limited['replies_per_s']} | {limited['max_per_sender_per_s']} | "
        f"{limited['max_per_sender_in_60s']} |",
        f"| out of the way | {unlimited['replies']} | {unlimited['senders']} | {unlimited['seconds']} | "
        f"{unlimited['replies_per_s']} | {unlimited['max_per_sender_per_s']} | {unlimited['max_per_sender_in_60s']} |",
        "",
        "Every reply reached the fake Twilio exactly once in every phase. With the default budget the shared bucket "
        "holds each number to 60 a minute plus a 3-second burst, whichever worker process sends.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--numbers", type=int, default=4, help="business numbers the customers text")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=60)
    parser.add_argument("--rate", type=float, default=3.0, help="replies/s in the latency rounds")
    parser.add_argument("--burst", type=int, default=240)
    parser.add_argument("--doc", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.doc:
        write_section("replies", render(figures, "python -m bench.replies " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    threading.current_thread().name = "bench-replies"
    main()
