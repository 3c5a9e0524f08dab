"""Zendesk backlog benchmark: a backlog of inbound SMS drained into a fake Zendesk held to 700 requests/minute.

One run, two deliveries, each on its own SQLite database and its own fake Zendesk (``tests/fake_zendesk.py``,
in-process HTTP server on 127.0.0.1 enforcing a sliding 60 s window and answering 429 + Retry-After beyond it):

- **gateway**: 10,000 signed Twilio SMS from 2,000 customers (5 each; a third of the customers send theirs in a burst,
  the others' are spread over the whole backlog) are stored in the inbox, run through the pipeline in-process
  (``PipelineWorker`` drained with ``drain_once``), then delivered by the real worker loop (``WorkerProcess``: 2
  delivery threads, as ``gateway work`` runs them) with ``batch_size`` 100: pending messages of a conversation are
  coalesced into one write and, under backlog, the batch endpoints carry 100 conversations a call.
- **naive**: one call per operation (``coalesce_max`` 1, ``bulk_threshold`` 100 with claims of 20 conversations, so
  the batch endpoints are never used): a user upsert per new customer, a ticket per conversation, a PUT per
  further message. At 700 requests/minute the full backlog would take about 18 minutes, so a proportional subset
  runs (default 1,000 messages from 200 customers) and its drain time is extrapolated to 10,000 messages.

Checked in the fake after each delivery: every message id is on exactly one comment, in its conversation's order,
one ticket per conversation, one user per customer. Reported: API calls per message (every request the fake
answered, 429s included), minutes to drain (delivery phase, wall clock), 429s served, rows rescheduled or
dead-lettered.

    .venv/bin/python -m bench.zendesk_backlog                 # full run, prints JSON
    .venv/bin/python -m bench.zendesk_backlog --doc           # also rewrites its section of docs/benchmarks.md
    .venv/bin/python -m bench.zendesk_backlog --render FIGURES.json   # the section from figures saved by --json
    .venv/bin/python -m bench.zendesk_backlog --messages 2000 --customers 400 --naive-messages 500
    .venv/bin/python -m bench.zendesk_backlog --messages 2000 --customers 400 --outage 30 --doc
                                                              # healthy against 30 s of 503 first, side by side
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from bench.docs import write_section
from gateway.config import load_config
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import conversations, customers, dead_letters, delivery_log, messages, outbox
from gateway.worker import WorkerProcess, drain_once
from tests.fake_zendesk import FakeZendesk

SECTION = "zendesk-backlog"
PUBLIC_URL = "http://127.0.0.1:8080"
CHANNEL = "sms-main"
ACCOUNT_SID = "AC" + "F" * 31 + "2"
AUTH_TOKEN = "bench-twilio-token"
LIMIT = 700  # requests per minute: Zendesk Enterprise
TARGET_CALLS, TARGET_MINUTES = 0.1, 3.0
TARGET_OUTAGE_CALLS = 0.02
OUTAGE_SECTION = "zendesk-backlog-outage"
BURST_SHARE = 1 / 3


def write_config(folder: Path, fake_url: str, *, batch_size: int, coalesce_max: int, bulk_threshold: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(f"""
storage: {{url: "sqlite:///{folder / 'gateway.db'}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{pipeline_threads: 0, delivery_threads: 2, batch_size: {batch_size}, coalesce_max: {coalesce_max},
           idle_poll_seconds: 0.05, lease_seconds: 600}}
logging: {{level: WARNING}}
data_dir: {folder}
channels:
  {CHANNEL}: {{type: twilio, account_sid: "{ACCOUNT_SID}", auth_token: "{AUTH_TOKEN}"}}
crms:
  desk: {{type: zendesk, subdomain: acme, base_url: "{fake_url}", email: agent@example.com,
          api_token: bench-zendesk-token, requests_per_minute: {LIMIT}, bulk_threshold: {bulk_threshold},
          job_timeout_seconds: 120, reply_poll_seconds: 0}}
routes:
  - {{from: [{CHANNEL}], to: desk}}
""", encoding="utf-8")
    return path


def arrival_order(messages: int, customers: int, seed: int) -> list[int]:
    """The customer of each arriving message: some customers in a burst of all theirs, the rest spread out."""
    per_customer = messages // customers
    rng = random.Random(seed)
    bursty = set(rng.sample(range(customers), int(customers * BURST_SHARE)))
    spread = [c for c in range(customers) if c not in bursty for _ in range(per_customer)]
    rng.shuffle(spread)
    order: list[int] = []
    bursts = sorted(bursty)
    rng.shuffle(bursts)
    slots = sorted(rng.sample(range(len(spread) + 1), len(bursts)))  # where each burst lands in the stream
    position = 0
    for slot, customer in zip(slots, bursts, strict=True):
        order.extend(spread[position:slot])
        order.extend([customer] * per_customer)
        position = slot
    order.extend(spread[position:])
    return order


def prefill(runtime: Runtime, messages_wanted: int, customers_wanted: int, run_id: int) -> None:
    """Store the backlog as ingress does: signed Twilio SMS webhooks, one inbox row each."""
    validator = RequestValidator(AUTH_TOKEN)
    url = f"{PUBLIC_URL}/hooks/{CHANNEL}"
    sent: Counter[int] = Counter()
    for i, customer in enumerate(arrival_order(messages_wanted, customers_wanted, seed=run_id)):
        sent[customer] += 1
        sid = f"SM{run_id:08x}{i:024x}"
        params = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": ACCOUNT_SID,
                  "From": f"+1415{5000000 + customer:07d}", "To": "+15005550006", "NumMedia": "0",
                  "NumSegments": "1", "SmsStatus": "received", "ApiVersion": "2010-04-01",
                  "Body": f"customer {customer}, message {sent[customer]}: my order has not arrived"}
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": validator.compute_signature(url, params)}
        runtime.queues.store_inbox(CHANNEL, [InboxItem(sid, urlencode(params).encode(),
                                                       "application/x-www-form-urlencoded", "message")],
                                   headers, url)


def run_pipeline(runtime: Runtime) -> tuple[int, float]:
    started = time.perf_counter()
    stage = PipelineWorker(runtime, "bench-pipeline")
    total = 0
    while (done := drain_once(stage)) > 0:
        total += done
    return total, time.perf_counter() - started


def outbox_open(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox).where(
            outbox.c.status == "pending")).scalar_one()


def run_delivery(runtime: Runtime, timeout: float) -> tuple[float, bool]:
    """The worker loop as ``gateway work`` runs it, until no outbox row is pending (or ``timeout``)."""
    worker = WorkerProcess(runtime)
    started = time.perf_counter()
    worker.start()
    try:
        while outbox_open(runtime) and time.perf_counter() - started < timeout:
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        worker.wait()
    return elapsed, outbox_open(runtime) > 0


def verify(runtime: Runtime, fake: FakeZendesk) -> dict[str, Any]:
    """Every message on exactly one comment, in order; one ticket per conversation, one user per customer."""
    with runtime.engine.connect() as conn:
        stored = {row.id for row in conn.execute(select(messages.c.id))}
        rows = conn.execute(select(outbox.c.message_id, outbox.c.conversation_id).order_by(outbox.c.id)).all()
        conversation_ids = set(conn.execute(select(conversations.c.id)).scalars())
        customer_ids = set(conn.execute(select(customers.c.id)).scalars())
    per_message = fake.comment_counts()
    order: dict[str, list[str]] = {}
    for message_id, conversation_id in rows:
        order.setdefault(conversation_id, []).append(message_id)
    tickets = fake.tickets()
    out_of_order = sum(1 for t in tickets if fake.ticket_markers(t["id"]) != order.get(t["external_id"]))
    ticket_counts = Counter(t["external_id"] for t in tickets)
    user_counts = Counter(u["external_id"] for u in fake.users())
    return {
        "messages": len(stored),
        "written_once": sum(1 for mid in stored if per_message.get(mid) == 1),
        "written_twice_or_more": sum(1 for n in per_message.values() if n > 1),
        "missing": len(stored - set(per_message)),
        "unknown_ids": len(set(per_message) - stored),
        "tickets_out_of_order": out_of_order,
        "one_ticket_per_conversation": set(ticket_counts) == conversation_ids and set(ticket_counts.values()) == {1},
        "one_user_per_customer": set(user_counts) == customer_ids and set(user_counts.values()) == {1},
        "comments": fake.comment_count(),
        "exact": len(stored) == sum(per_message.values()) == len(per_message) and per_message.keys() == stored
        and out_of_order == 0,
    }


def delivery_outcomes(runtime: Runtime) -> dict[str, Any]:
    with runtime.engine.connect() as conn:
        statuses = dict(conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all())
        retries = dict(conn.execute(select(delivery_log.c.error_code, func.count()).where(
            delivery_log.c.outcome == "retry").group_by(delivery_log.c.error_code)).all())
        operations = dict(conn.execute(select(delivery_log.c.operation, func.count()).where(
            delivery_log.c.outcome == "delivered").group_by(delivery_log.c.operation)).all())
        dead = conn.execute(select(func.count()).select_from(dead_letters)).scalar_one()
    return {"outbox": statuses, "retries_by_code": retries, "operations": operations, "dead_letters": dead}


def run_one(base: Path, name: str, messages_wanted: int, customers_wanted: int, *, batch_size: int,
            coalesce_max: int, bulk_threshold: int, job_delay: float, timeout: float, run_id: int,
            outage: float = 0.0) -> dict[str, Any]:
    with FakeZendesk(requests_per_minute=LIMIT, job_delay_seconds=job_delay) as fake:
        config = load_config(write_config(base / name, fake.url, batch_size=batch_size, coalesce_max=coalesce_max,
                                          bulk_threshold=bulk_threshold))
        runtime = build_runtime(config)
        try:
            prefill(runtime, messages_wanted, customers_wanted, run_id)
            processed, pipeline_s = run_pipeline(runtime)
            print(f"[{name}] pipeline: {processed} messages in {pipeline_s:.1f} s; delivering ...", file=sys.stderr)
            if outage:
                fake.outage(outage)  # the backlog meets a Zendesk answering 503 to everything
            drain_s, timed_out = run_delivery(runtime, timeout)
            check = verify(runtime, fake)
            outcomes = delivery_outcomes(runtime)
        finally:
            runtime.close()
        calls = fake.request_count()
        endpoints = {re.sub(r"^(GET|POST|PUT) /api/v2", r"\1 ", k): v
                     for k, v in sorted(fake.endpoint_counts().items(), key=lambda kv: -kv[1])}
        result = {
            "messages": messages_wanted, "customers": customers_wanted, "batch_size": batch_size,
            "coalesce_max": coalesce_max, "bulk_threshold": bulk_threshold, "job_delay_seconds": job_delay,
            "pipeline_seconds": round(pipeline_s, 1), "drain_seconds": round(drain_s, 1),
            "drain_minutes": round(drain_s / 60, 2), "timed_out": timed_out,
            "api_calls": calls, "calls_per_message": round(calls / messages_wanted, 4),
            "throttled_429": fake.throttled, "outage_seconds": outage, "unavailable_503": fake.unavailable,
            "endpoints": endpoints, "check": check, **outcomes,
        }
    print(f"[{name}] {json.dumps({k: result[k] for k in ('drain_seconds', 'api_calls', 'throttled_429')})}",
          file=sys.stderr)
    return result


def run_outage(messages_wanted: int, customers_wanted: int, outage: float, job_delay: float = 1.0,
               timeout: float = 1800.0, workdir: Path | None = None) -> dict[str, Any]:
    """The same backlog delivered twice in one run: into a healthy Zendesk, and into one answering 503 to every
    request for the first ``outage`` seconds of the delivery."""
    base = Path(workdir or tempfile.mkdtemp(prefix="gw-bench-zendesk-outage-"))
    settings: dict[str, Any] = {"batch_size": 100, "coalesce_max": 20, "bulk_threshold": 10, "job_delay": job_delay,
                                "timeout": timeout}
    healthy = run_one(base, "healthy", messages_wanted, customers_wanted, run_id=13, **settings)
    after = run_one(base, "outage", messages_wanted, customers_wanted, run_id=13, outage=outage, **settings)
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "limit_per_minute": LIMIT,
            "workdir": str(base), "healthy": healthy, "outage": after,
            "target": {"calls_per_message": TARGET_OUTAGE_CALLS, "value": after["calls_per_message"],
                       "met": after["calls_per_message"] <= TARGET_OUTAGE_CALLS and after["check"]["exact"]}}


def render_outage(result: dict[str, Any], command: str) -> str:
    """The outage figures, as a subsection of the Zendesk backlog section."""
    h, o = result["healthy"], result["outage"]

    def row(name: str, r: dict[str, Any]) -> str:
        c = r["check"]
        retried = sum(r["retries_by_code"].values())
        return (f"| {name} | {r['messages']:,} / {r['customers']:,} | {r['api_calls']:,} | {r['calls_per_message']} |"
                f" {r['unavailable_503']} | {retried} | {r['drain_seconds']} s | {c['written_once']:,} once, "
                f"{c['written_twice_or_more']} twice, {c['missing']} missing | {r['dead_letters']} |")

    return "\n".join([
        f"### After an outage: {o['messages']:,} messages that met a Zendesk answering 503",
        "",
        f"Generated by `{command}` on {result['date']}: the same backlog (same messages, same settings: batch_size",
        f"{o['batch_size']}, coalesce_max {o['coalesce_max']}, bulk_threshold {o['bulk_threshold']}, the default "
        "retry policy) delivered twice in one run, into a healthy fake Zendesk and into one that answers",
        f"every request 503 (no `Retry-After`) for the first {o['outage_seconds']:g} s of the delivery. "
        "API calls count every request the fake answered, the 503s included.",
        "",
        "| delivery | messages / customers | API calls | calls / message | 503s served | rows rescheduled | drain |"
        " written | dead letters |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        row("healthy Zendesk", h),
        row(f"{o['outage_seconds']:g} s of 503 first", o),
        "",
        f"Target: at most {TARGET_OUTAGE_CALLS} calls per message after the outage: "
        f"{_verdict(result['target']['met'])} ({o['calls_per_message']}).",
        "Where the outage run's calls went (503s included): "
        + ", ".join(f"`{k}` {v}" for k, v in o["endpoints"].items()) + ".",
        "",
        "A 503 (like a 429) proves nothing was written, so the rows it failed are recorded as certain failures and",
        "come back on the batch endpoints; every row the 503 refused in one call is rescheduled with one delay, so",
        "the backlog comes back together instead of scattered by each row's jitter.",
    ])


def run(messages_wanted: int = 10_000, customers_wanted: int = 2_000, naive_messages: int = 1_000,
        job_delay: float = 1.0, timeout: float = 1800.0, workdir: Path | None = None) -> dict[str, Any]:
    base = Path(workdir or tempfile.mkdtemp(prefix="gw-bench-zendesk-"))
    naive_customers = max(1, naive_messages * customers_wanted // messages_wanted)
    gateway = run_one(base, "gateway", messages_wanted, customers_wanted, batch_size=100, coalesce_max=20,
                      bulk_threshold=10, job_delay=job_delay, timeout=timeout, run_id=11)
    naive = run_one(base, "naive", naive_messages, naive_customers, batch_size=20, coalesce_max=1,
                    bulk_threshold=100, job_delay=job_delay, timeout=timeout, run_id=12)
    scale = messages_wanted / naive_messages
    budget = LIMIT * 0.95  # what the connector allows itself of the plan's limit
    naive["extrapolated"] = {
        "messages": messages_wanted,
        "api_calls": round(naive["api_calls"] * scale),
        "drain_minutes_from_measured_time": round(naive["drain_minutes"] * scale, 1),
        "drain_minutes_at_the_request_budget": round(naive["api_calls"] * scale / budget, 1),
    }
    ok_429 = all(r["dead_letters"] == 0 and not r["timed_out"] and r["check"]["exact"] for r in (gateway, naive))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "limit_per_minute": LIMIT, "workdir": str(base),
        "gateway": gateway, "naive": naive,
        "targets": {
            "calls_per_message": {"target": TARGET_CALLS, "value": gateway["calls_per_message"],
                                  "met": gateway["calls_per_message"] <= TARGET_CALLS},
            "drain_minutes": {"target": TARGET_MINUTES, "value": gateway["drain_minutes"],
                              "met": gateway["drain_minutes"] <= TARGET_MINUTES and not gateway["timed_out"]},
            "no_429_unhandled": {"met": ok_429, "throttled_429": gateway["throttled_429"] + naive["throttled_429"]},
        },
    }


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(result: dict[str, Any], command: str) -> str:
    g, n, t = result["gateway"], result["naive"], result["targets"]
    x = n["extrapolated"]

    def retries(r: dict[str, Any]) -> str:
        return ", ".join(f"{code} x{count}" for code, count in r["retries_by_code"].items()) or "none"

    def check(r: dict[str, Any]) -> str:
        c = r["check"]
        return (f"{c['written_once']:,} of {c['messages']:,} written exactly once, {c['written_twice_or_more']} "
                f"twice, {c['missing']} missing, {c['tickets_out_of_order']} tickets out of order")

    def yes(r: dict[str, Any]) -> str:
        return "yes" if r["check"]["one_ticket_per_conversation"] and r["check"]["one_user_per_customer"] else "NO"

    polls = g["endpoints"].get("GET /job_statuses/show_many", 0)
    lines = [
        "## Zendesk backlog: 10,000 messages into a Zendesk held to 700 requests/minute",
        "",
        f"Generated by `{command}` on {result['date']}. The fake Zendesk (`tests/fake_zendesk.py`, in-process on",
        "127.0.0.1) counts every request in a sliding 60 s window and answers 429 with `Retry-After` beyond "
        f"{result['limit_per_minute']};",
        f"its batch jobs complete {g['job_delay_seconds']:g} s after they are queued. Inbound SMS are stored as "
        "signed webhooks, run through the",
        "pipeline in-process, then delivered by `WorkerProcess` with 2 delivery threads (as `gateway work`) on "
        "SQLite. The connector's",
        "shared limiter allows itself 95 % of the plan's limit. Drain time is the delivery phase only, wall clock.",
        "",
        "| delivery | messages / customers | settings | API calls | calls / message | drain | 429s served |"
        " dead letters |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
        f"| gateway (coalescing + batch endpoints) | {g['messages']:,} / {g['customers']:,} | batch_size "
        f"{g['batch_size']}, coalesce_max {g['coalesce_max']}, bulk_threshold {g['bulk_threshold']} | "
        f"{g['api_calls']:,} | {g['calls_per_message']} | {g['drain_minutes']} min ({g['drain_seconds']} s) | "
        f"{g['throttled_429']} | {g['dead_letters']} |",
        f"| naive, one call per operation (measured subset) | {n['messages']:,} / {n['customers']:,} | batch_size "
        f"{n['batch_size']}, coalesce_max 1, bulk_threshold {n['bulk_threshold']} (never reached) | "
        f"{n['api_calls']:,} | {n['calls_per_message']} | {n['drain_minutes']} min ({n['drain_seconds']} s) | "
        f"{n['throttled_429']} | {n['dead_letters']} |",
        f"| naive, **extrapolated** to {x['messages']:,} messages | {x['messages']:,} / "
        f"{result['gateway']['customers']:,} | (not run) | ~{x['api_calls']:,} | {n['calls_per_message']} | "
        f"~{x['drain_minutes_at_the_request_budget']} min at the request budget "
        f"(~{x['drain_minutes_from_measured_time']} min scaling the measured time) | n/a | n/a |",
        "",
        f"Targets: at most {t['calls_per_message']['target']} calls per message: "
        f"{_verdict(t['calls_per_message']['met'])} ({g['calls_per_message']}); drained within "
        f"{t['drain_minutes']['target']:g} minutes: {_verdict(t['drain_minutes']['met'])} ({g['drain_minutes']} min); "
        f"no 429 left unhandled: {_verdict(t['no_429_unhandled']['met'])} "
        f"({t['no_429_unhandled']['throttled_429']} served in all, every message delivered, none dead-lettered).",
        "",
        f"Checked in the fake: gateway: {check(g)}; naive: {check(n)}. One ticket per conversation and one user per",
        f"customer: gateway {yes(g)}, naive {yes(n)}. "
        f"Rows rescheduled by the outbox (retry, by error code): gateway {retries(g)}; naive {retries(n)}.",
        "",
        "Where the gateway's calls went: " + ", ".join(f"`{k}` {v}" for k, v in g["endpoints"].items()) + ".",
        f"Comments written: {g['check']['comments']:,} for {g['messages']:,} messages (each conversation's pending "
        "messages coalesced into one).",
        "Naive: " + ", ".join(f"`{k}` {v}" for k, v in n["endpoints"].items()) + ".",
        "",
        "Pipeline (not part of the drain time): "
        f"{g['pipeline_seconds']} s for {g['messages']:,} messages, {n['pipeline_seconds']} s for the subset.",
        "",
        "Reading the figures:",
        "",
        "- The whole backlog is in the outbox before delivery starts, so each conversation's pending messages go out",
        "  as one write (here the ticket creation itself). A backlog that keeps growing while delivery runs adds",
        "  `tickets/update_many` calls, one per 100 conversations with new messages: still far below 0.1 per message.",
        f"- Job polling is {polls} of the gateway's {g['api_calls']} calls: the first read, right after a job is "
        "queued, always finds it",
        "  queued. Waiting before the first read would save about a third of them (not changed here).",
        f"- The drain time is not the request budget ({g['api_calls']} requests take "
        f"{g['api_calls'] / (result['limit_per_minute'] * 0.95) * 60:.0f} s at 665/minute): it goes to the batch",
        "  jobs' own time (each polled until done) and to SQLite (an outbox update and a delivery-log row per",
        "  message, committed one by one); the two were not timed separately.",
        "- 429s in the naive run: the shared limiter is a token bucket holding 10 s of budget and refilled at 95 %",
        f"  of {result['limit_per_minute']}/minute, so in a 60 s window that starts with a full bucket it may send "
        f"about {round(result['limit_per_minute'] * 0.95 / 6 + result['limit_per_minute'] * 0.95)} requests.",
        "  The fake's sliding window is stricter; the 429s that follow are waited out inline (`Retry-After`,",
        "  every thread paused through the shared limiter) and the request sent again: none reached the outbox.",
        "- Extrapolation: the naive subset has the full backlog's shape (5 messages per customer, the same mix of",
        "  bursts), so its calls per message carry over; its drain time at 10,000 messages is calls ÷ the request",
        "  budget (665/minute), and, as a cross-check, the measured time scaled by 10. It was not run in full.",
    ]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    write_section(SECTION, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--naive-messages", type=int, default=1_000)
    parser.add_argument("--job-delay", type=float, default=1.0, help="seconds a fake batch job takes")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up a delivery after this many seconds")
    parser.add_argument("--doc", action="store_true", help="rewrite the section of docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rewrite the section from saved figures")
    parser.add_argument("--outage", type=float, metavar="SECONDS",
                        help="instead: deliver --messages twice, into a healthy Zendesk and into one answering 503 "
                             "for SECONDS first (try --messages 2000 --customers 400 --outage 30)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR if args.outage else logging.WARNING)  # the outage logs a retry per row
    command = " ".join([".venv/bin/python -m bench.zendesk_backlog", *sys.argv[1:]])
    if args.outage:
        outage = run_outage(args.messages, args.customers, args.outage, args.job_delay, args.timeout)
        print(json.dumps(outage, indent=2))
        if args.json:
            args.json.write_text(json.dumps({"command": command, "result": outage}, indent=2), encoding="utf-8")
        if args.doc:
            write_section(OUTAGE_SECTION, render_outage(outage, command))
        return
    if args.render:
        saved = json.loads(args.render.read_text(encoding="utf-8"))
        write_doc(render(saved["result"], saved["command"]))
        return
    result = run(args.messages, args.customers, args.naive_messages, args.job_delay, args.timeout)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "result": result}, indent=2), encoding="utf-8")
    if args.doc:
        write_doc(render(result, command))


if __name__ == "__main__":
    main()
