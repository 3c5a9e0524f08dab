"""Robustness probe: hostile and good webhooks mixed, with the worker killed (SIGKILL) while it processes.

``gateway serve`` and ``gateway work`` run as separate processes on SQLite in a temp folder, with a Twilio channel,
a Mailgun channel and the jsonl CRM. Client threads send, paced and in a fixed pseudo-random mix:

- **good** messages: each customer's numbered messages one after another (the next only once the previous one was
  acknowledged), so their order is known; SMS customers on Twilio, email customers on Mailgun;
- **replays** of good requests already acknowledged (the same body and signature);
- **hostile** requests: forged signatures, a signature over other parameters (tampered body), a signature for
  another URL, stale Mailgun timestamps, malformed bodies (signed but missing the message id, not a number,
  undecodable bytes, JSON), oversized bodies, an unknown channel, the wrong method.

Meanwhile the work process is SIGKILLed a few times while it processes and started again. Afterwards the CRM file
is read: every acknowledged good message must be there once, in each conversation in the order it was sent, and
nothing hostile may be.

    .venv/bin/python -m bench.robustness            # a few minutes; prints the figures
    .venv/bin/python -m bench.robustness --doc      # also rewrites its section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from sqlalchemy import create_engine, func, select
from twilio.request_validator import RequestValidator

from bench.docs import write_section
from connectors.mailgun import signature_for
from connectors.sendgrid import multipart_body
from gateway.storage.tables import inbox, outbox
from tests.helpers import GatewayProcess, free_port, twilio_params, wait_for, wait_ready

ACCOUNT = "AC" + "B" * 31 + "7"
TOKEN = "probe-twilio-token"
MAILGUN_KEY = "probe-mailgun-signing-key"
MAX_BODY = 256 * 1024
MARKER = re.compile(r"probe (\S+) #(\d+)")
EXPECTED: dict[str, set[int]] = {  # what each kind of request must be answered with
    "good": {200}, "replay": {200},
    "forged signature": {401}, "tampered body": {401}, "signed for another URL": {401},
    "stale timestamp": {401}, "forged Mailgun signature": {401},
    "signed, no message id": {400}, "signed, NumMedia not a number": {400},
    # a Mailgun signature is read from the raw bytes before the form: a cut-off body may lose it (401)
    "undecodable bytes": {400, 401}, "JSON body": {400, 401}, "truncated multipart": {400, 401},
    # an unknown channel is answered as a known one answers an unsigned request, so names cannot be guessed
    "oversized body": {413}, "unknown channel": {401, 404}, "GET": {405},
}
HOSTILE = [kind for kind in EXPECTED if kind not in ("good", "replay")]


@dataclass
class Request:
    kind: str
    path: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"
    marker: str | None = None  # the good message's text


@dataclass
class Client:
    """One client thread's keep-alive session, and the kind of request it sent last."""

    session: requests.Session
    previous: str = "nothing"


@dataclass
class Tally:
    """What was sent and answered, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)

    def record(self, request: Request, status: int | None, previous: str) -> None:
        with self.lock:
            self.sent[request.kind] += 1
            if status is None:
                self.connection_errors[f"{request.kind} after {previous}"] += 1
            else:
                self.answers[(request.kind, status)] += 1
            if request.kind == "good" and status == 200 and request.marker:
                self.acknowledged.append(request.marker)


class Traffic:
    """Builds the requests: signed as the providers sign them, or broken in one way each."""

    def __init__(self, base: str, rng: random.Random) -> None:
        self.base = base
        self.rng = rng
        self.validator = RequestValidator(TOKEN)

    def sms(self, customer: str, n: int) -> Request:
        phone = f"+1415777{int(customer[1:]):04d}"
        params = twilio_params("SM" + uuid.uuid4().hex, phone, f"probe {customer} #{n}", ACCOUNT)
        return self._twilio("good", params, marker=params["Body"])

    def email(self, customer: str, n: int) -> Request:
        address = f"{customer}@customers.example"
        text = f"probe {customer} #{n}"
        headers = [["From", address], ["To", "support@example.com"], ["Subject", f"Order question {customer}"],
                   ["Message-Id", make_msgid(domain="customers.example")],
                   ["Date", format_datetime(datetime.now(UTC))]]
        return self._mailgun("good", {"recipient": "support@example.com", "sender": address, "from": address,
                                      "subject": f"Order question {customer}", "body-plain": text,
                                      "message-headers": json.dumps(headers)}, marker=text)

    def hostile(self, kind: str) -> Request:
        params = twilio_params("SM" + uuid.uuid4().hex, "+14155559999", "forged probe", ACCOUNT)
        if kind == "forged signature":
            return Request(kind, "/hooks/sms-main", urlencode(params).encode(), self._form(
                base64.b64encode(self.rng.randbytes(20)).decode()))
        if kind == "tampered body":
            request = self._twilio(kind, params)
            return Request(kind, request.path, urlencode({**params, "Body": "tampered probe"}).encode(),
                           request.headers)
        if kind == "signed for another URL":
            signature = self.validator.compute_signature("https://elsewhere.example/hooks/sms-main", params)
            return Request(kind, "/hooks/sms-main", urlencode(params).encode(), self._form(signature))
        if kind == "stale timestamp":
            return self._mailgun(kind, self._mail_fields("stale probe"), timestamp=int(time.time()) - 3600)
        if kind == "forged Mailgun signature":
            return self._mailgun(kind, self._mail_fields("forged probe"), key="not-the-key")
        if kind == "signed, no message id":
            del params["MessageSid"], params["SmsSid"], params["SmsMessageSid"]
            return self._twilio(kind, params)
        if kind == "signed, NumMedia not a number":
            return self._twilio(kind, {**params, "NumMedia": "lots"})
        if kind == "undecodable bytes":
            return Request(kind, "/hooks/sms-main", b"\xff\xfe" + self.rng.randbytes(200), self._form("x"))
        if kind == "JSON body":
            return Request(kind, "/hooks/sms-main", json.dumps(params).encode(),
                           {"Content-Type": "application/json", "X-Twilio-Signature": "x"})
        if kind == "truncated multipart":
            request = self._mailgun(kind, self._mail_fields("truncated probe"))
            return Request(kind, request.path, request.body[: len(request.body) // 2], request.headers)
        if kind == "oversized body":
            big = {**params, "Body": "forged probe " + "x" * (MAX_BODY + 1024)}
            return self._twilio(kind, big)
        if kind == "unknown channel":
            return Request(kind, "/hooks/no-such-channel", urlencode(params).encode(), self._form("x"))
        if kind == "GET":
            return Request(kind, "/hooks/sms-main", b"", {}, method="GET")
        raise ValueError(kind)

    def _twilio(self, kind: str, params: dict[str, str], marker: str | None = None) -> Request:
        signature = self.validator.compute_signature(f"{self.base}/hooks/sms-main", params)
        return Request(kind, "/hooks/sms-main", urlencode(params).encode(), self._form(signature), marker=marker)

    def _form(self, signature: str) -> dict[str, str]:
        return {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}

    def _mail_fields(self, text: str) -> dict[str, str]:
        headers = [["From", "x@forged.example"], ["To", "support@example.com"], ["Subject", text],
                   ["Message-Id", make_msgid(domain="forged.example")]]
        return {"recipient": "support@example.com", "sender": "x@forged.example", "subject": text,
                "body-plain": text, "message-headers": json.dumps(headers)}

    def _mailgun(self, kind: str, fields: dict[str, str], *, timestamp: int | None = None,
                 key: str = MAILGUN_KEY, marker: str | None = None) -> Request:
        stamp, token = str(timestamp or int(time.time())), uuid.uuid4().hex * 2
        body, content_type = multipart_body({**fields, "timestamp": stamp, "token": token,
                                             "signature": signature_for(key, stamp, token)})
        return Request(kind, "/hooks/mail-main", body, {"Content-Type": content_type}, marker=marker)


def _config(folder: Path, port: int, lease_seconds: int) -> Path:
    path = folder / "config.yaml"
    path.write_text(f"""\
storage: {{url: "sqlite:///{folder / 'gateway.db'}"}}
server: {{listen: "127.0.0.1:{port}", public_url: "http://127.0.0.1:{port}", max_body_bytes: {MAX_BODY}}}
workers: {{idle_poll_seconds: 0.05, lease_seconds: {lease_seconds}, retry: {{initial_seconds: 0.5, max_seconds: 5}}}}
logging: {{level: INFO}}
channels:
  sms-main: {{type: twilio, account_sid: "{ACCOUNT}", auth_token: "{TOKEN}"}}
  mail-main: {{type: mailgun, signing_key: "{MAILGUN_KEY}", own_addresses: ["*@example.com"]}}
crms:
  trial: {{type: jsonl, path: "{folder / 'crm.jsonl'}"}}
routes:
  - {{from: [sms-main, mail-main], to: trial}}
""", encoding="utf-8")
    return path


class Probe:
    """One run: the two processes, the clients, the kills, and the reading of the CRM file."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder, self.args = folder, args
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = _config(folder, self.port, args.lease)
        self.tally = Tally()
        self.kills: list[dict[str, Any]] = []
        self.serve = GatewayProcess(["serve", "-c", str(self.config)], folder / "serve.log")
        wait_ready(self.base, self.serve, timeout=60)
        self.work = self._start_worker()
        self.engine = create_engine(f"sqlite:///{folder / 'gateway.db'}")
        self._pace_lock = threading.Lock()
        self._next_due = time.monotonic()

    def _start_worker(self) -> GatewayProcess:
        return GatewayProcess(["work", "-c", str(self.config)], self.folder / f"work{len(self.kills)}.log")

    def _pace(self) -> None:
        """The whole probe sends at ``--rate`` requests a second (pacing the load, not synchronising)."""
        with self._pace_lock:
            due = self._next_due = max(self._next_due + 1 / self.args.rate, time.monotonic())
        time.sleep(max(0.0, due - time.monotonic()))

    def _send(self, client: Client, request: Request) -> int | None:
        """Send on the client's keep-alive connection; None when the connection closed without an answer."""
        self._pace()
        try:
            answer = client.session.request(request.method, self.base + request.path, data=request.body or None,
                                            headers=request.headers, timeout=30)
            status: int | None = answer.status_code
        except requests.ConnectionError:
            status = None
        self.tally.record(request, status, client.previous)
        client.previous = request.kind
        return status

    def client(self, customers: list[str], seed: int) -> None:
        """Each customer's messages in order; replays and hostile requests in between."""
        rng = random.Random(seed)
        traffic = Traffic(self.base, rng)
        client = Client(requests.Session())
        done: list[Request] = []
        for n in range(self.args.messages):
            for customer in customers:
                build = traffic.email if customer.startswith("e") else traffic.sms
                request = build(customer, n)
                for _ in range(5):  # a provider retries what was not acknowledged
                    status = self._send(client, request)
                    if status == 200:
                        done.append(request)
                        break
                if done and rng.random() < self.args.replays:  # the latest, or any earlier one
                    original = done[-1] if rng.random() < 0.5 else rng.choice(done)
                    self._send(client, Request("replay", original.path, original.body, original.headers))
                for _ in range(_count(rng, self.args.hostile)):
                    self._send(client, traffic.hostile(rng.choice(HOSTILE)))
        client.session.close()

    def killer(self, total_good: int, traffic_done: threading.Event) -> None:
        """SIGKILL the work process while it holds rows, at evenly spread points of the traffic (or of the backlog
        it leaves), and start it again at once."""
        points = [total_good * (k + 1) // (self.args.kills + 1) for k in range(self.args.kills)]
        for point in points:
            while len(self.tally.acknowledged) < point and not traffic_done.is_set():
                traffic_done.wait(0.05)
            in_hand = 0
            with contextlib.suppress(AssertionError):
                in_hand = wait_for(lambda: self._leased(self.work.pid), 30, "the worker holding rows", interval=0.01)
            if not in_hand:
                return  # nothing left to interrupt
            os.kill(self.work.pid, signal.SIGKILL)
            killed = time.monotonic()
            self.work.wait(timeout=30)
            self.work.stop()
            self.kills.append({"at_acknowledged": len(self.tally.acknowledged), "rows_in_hand": in_hand})
            self.work = self._start_worker()
            with contextlib.suppress(AssertionError):
                wait_for(lambda: "worker started" in self.work.output(), 120, "the worker back", interval=0.05)
            self.kills[-1]["back_after_seconds"] = round(time.monotonic() - killed, 1)

    def _leased(self, pid: int | None = None) -> int:
        """Inbox and outbox rows under lease: the work process ``pid``'s, or anyone's (a killed one's too)."""
        with self.engine.connect() as conn:
            total = 0
            for table in (inbox, outbox):
                owner = table.c.lease_owner.is_not(None) if pid is None else table.c.lease_owner.like(f"%:{pid}:%")
                total += conn.execute(select(func.count()).select_from(table).where(
                    table.c.status == "pending", owner)).scalar_one()
        return total

    def run(self) -> dict[str, Any]:
        sms = [f"s{k}" for k in range(self.args.sms_customers)]
        mail = [f"e{k}" for k in range(self.args.email_customers)]
        customers = sms + mail
        groups = [customers[k::self.args.clients] for k in range(self.args.clients)]
        total_good = len(customers) * self.args.messages
        traffic_done = threading.Event()
        started = time.monotonic()
        killer = threading.Thread(target=self.killer, args=(total_good, traffic_done), name="killer")
        clients = [threading.Thread(target=self.client, args=(group, self.args.seed + k), name=f"client{k}")
                   for k, group in enumerate(groups)]
        killer.start()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        traffic_done.set()
        killer.join()
        traffic_seconds = time.monotonic() - started
        expected = set(self.tally.acknowledged)
        with contextlib.suppress(AssertionError):  # what never arrives is reported as lost
            wait_for(lambda: expected <= set(self._crm_markers()) and self._leased() == 0, self.args.settle,
                     "every acknowledged message in the CRM", interval=0.2)
        return self._figures(traffic_seconds, time.monotonic() - started)

    def _crm_records(self) -> list[dict[str, Any]]:
        path = self.folder / "crm.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _crm_markers(self) -> list[str]:
        return [m.group() for r in self._crm_records() if (m := MARKER.search(_text(r)))]

    def _figures(self, traffic_seconds: float, total_seconds: float) -> dict[str, Any]:
        records = self._crm_records()
        acknowledged = set(self.tally.acknowledged)
        markers = Counter(m.group() for r in records if (m := MARKER.search(_text(r))))
        by_conversation: dict[str, list[int]] = defaultdict(list)
        for record in records:
            match = MARKER.search(_text(record))
            if match:
                by_conversation[record["conversation"]["id"]].append(int(match.group(2)))
        late = {cid: sum(1 for i, n in enumerate(seq) if n < max(seq[:i], default=-1))
                for cid, seq in by_conversation.items()}
        unexpected = {f"{kind} -> {status}": count for (kind, status), count in sorted(self.tally.answers.items())
                      if status not in EXPECTED[kind]}
        return {
            "requests": sum(self.tally.sent.values()),
            "by_kind": dict(sorted(self.tally.sent.items())),
            "answers": {f"{kind} -> {status}": count for (kind, status), count in sorted(self.tally.answers.items())},
            "answered_5xx": sum(c for (_, status), c in self.tally.answers.items() if status >= 500),
            "connection_errors": dict(self.tally.connection_errors),
            "unexpected_answers": unexpected,
            "hostile_accepted": sum(c for (kind, status), c in self.tally.answers.items()
                                    if kind in HOSTILE and 200 <= status < 300),
            "hostile_in_crm": sum(1 for r in records if "probe" in _text(r) and not MARKER.search(_text(r))),
            "good_acknowledged": len(acknowledged),
            "lost": len(acknowledged - set(markers)),
            "duplicated": sum(n - 1 for n in markers.values() if n > 1),
            "conversations": len(by_conversation),
            "out_of_order": sum(late.values()),
            "conversations_out_of_order": sum(1 for n in late.values() if n),
            "kills": self.kills,
            "traffic_seconds": round(traffic_seconds, 1),
            "total_seconds": round(total_seconds, 1),
        }

    def close(self) -> None:
        self.work.stop()
        self.serve.stop()
        self.engine.dispose()


def _text(record: dict[str, Any]) -> str:
    message = record.get("message") or {}
    return str(message.get("text") or message.get("full_text") or "")


def _count(rng: random.Random, mean: float) -> int:
    """How many hostile requests follow a good one: ``mean`` on average."""
    whole = int(mean)
    return whole + (1 if rng.random() < mean - whole else 0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-robustness-") as tmp:
        probe = Probe(Path(tmp), args)
        try:
            figures = probe.run()
        finally:
            probe.close()
    figures["settings"] = {key: getattr(args, key) for key in (
        "sms_customers", "email_customers", "messages", "clients", "rate", "replays", "hostile", "kills", "lease",
        "seed")}
    return figures


def render(figures: dict[str, Any], command: str) -> str:
    s = figures["settings"]
    kills = figures["kills"]
    rows = [
        ("requests sent", figures["requests"]),
        ("answered 5xx", figures["answered_5xx"]),
        ("answers other than the expected one", sum(figures["unexpected_answers"].values())),
        ("hostile requests accepted (2xx)", figures["hostile_accepted"]),
        ("hostile messages in the CRM", figures["hostile_in_crm"]),
        ("good messages acknowledged", figures["good_acknowledged"]),
        ("good messages lost (acknowledged, not in the CRM)", figures["lost"]),
        ("good messages duplicated in the CRM", figures["duplicated"]),
        (f"good messages out of order in their conversation (of {figures['conversations']} conversations, "
         f"{figures['conversations_out_of_order']} affected)", figures["out_of_order"]),
        ("worker SIGKILLs while it held rows", len(kills)),
    ]
    lines = [
        "## Robustness",
        "",
        "Hostile and good webhooks mixed, sent to `gateway serve` while `gateway work` is killed with SIGKILL in",
        "the middle of its work and started again at once (SQLite, a Twilio and a Mailgun channel, the jsonl CRM,",
        f"`workers.lease_seconds` {s['lease']}). {s['sms_customers']} SMS and {s['email_customers']} email customers "
        f"each send {s['messages']} numbered messages one after",
        "another (the next once the previous is acknowledged). Between them come replays of acknowledged requests",
        f"({s['replays']:.0%} of good ones) and, {s['hostile']:g} per good one on average, hostile requests: forged "
        "signatures, a signature",
        "over other parameters, a signature for another URL, stale Mailgun timestamps, signed requests without a",
        "message id or with a field that is not a number, undecodable bytes, JSON, a truncated multipart body,",
        "oversized bodies, an unknown channel, GET. The CRM file is then read.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- Command: `{command}` ({s['clients']} client threads, {s['rate']:g} requests/s in all, seed {s['seed']}; "
        f"traffic {figures['traffic_seconds']} s, all delivered after {figures['total_seconds']} s)",
        "",
        "| figure | value |",
        "|---|---:|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "Requests by kind and answer: " + ", ".join(f"{k} {v}" for k, v in figures["answers"].items()) + ".",
    ]
    if figures["connection_errors"]:
        lines += ["", "Requests whose connection closed before an answer (each good one was sent again, as a "
                  "provider does, and acknowledged): " + ", ".join(
                      f"{k}: {v}" for k, v in figures["connection_errors"].items()) + ". After refusing an "
                  "oversized body unread, the server closes that keep-alive connection; a client that sends on it "
                  "at that moment sees it closed."]
    if figures["unexpected_answers"]:
        lines += ["", "Unexpected answers: " + ", ".join(
            f"{k} ({v})" for k, v in figures["unexpected_answers"].items()) + "."]
    lines += ["", "Kills: " + "; ".join(
        f"after {k['at_acknowledged']} good messages, {k['rows_in_hand']} inbox and outbox rows in hand, worker back "
        f"{k.get('back_after_seconds', '?')} s later" for k in kills) + "."]
    lines += ["", "The restarted worker takes the killed one's rows over as soon as it starts (the killed process's "
              f"lock is free), without waiting for their leases to end ({s['lease']} s here, 120 s by default); "
              "until such a row is stored, the same customer's later messages wait behind it while other customers' "
              "go on. The out-of-order figure counts messages that reached the CRM after a later one of their "
              "conversation."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sms-customers", type=int, default=40)
    parser.add_argument("--email-customers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=10, help="good messages per customer")
    parser.add_argument("--clients", type=int, default=5, help="client threads")
    parser.add_argument("--rate", type=float, default=60.0, help="requests/s, all clients together")
    parser.add_argument("--replays", type=float, default=0.2, help="share of good messages replayed")
    parser.add_argument("--hostile", type=float, default=1.0, help="hostile requests per good one, on average")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of the work process")
    parser.add_argument("--lease", type=int, default=20, help="workers.lease_seconds (longer than a restart)")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to wait for the CRM afterwards")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--doc", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args(argv)
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.doc:
        write_section("robustness", render(figures, "python -m bench.robustness " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    threading.current_thread().name = "bench-robustness"
    main()
