"""KPI benchmark: the console's overview, ``gateway kpis`` and a ``/metrics`` scrape on a SQLite database of
1,000,000 messages.

The database is generated directly with bulk inserts (sqlite3 ``executemany``, foreign keys off while loading) after
the real migrations: 200,000 conversations over a year (``--days``) ending now on five channels (SMS, WhatsApp,
email, Slack, Messenger) in four languages, five messages each (three from the customer, of which one in 20 on
another channel, and two agent replies for the 80% answered, else acknowledgements), 60% solved, acknowledgements
for half, survey answers for a tenth, 2,000 dead letters and a waiting inbox. Times are then read through the real
code: the overview page through Flask's test client with a logged-in session (the day, week and month, per-day
charts), the KPI computation for one period as ``gateway kpis`` does it, and ``/metrics`` (all time) in a new
process (cache cold) and again in a process whose cache expired (warm). Every figure is the median of ``--rounds``
runs; the business-hours calendar (Mon-Fri 09:00-18:00) applies to every channel, the costlier case.

    .venv/bin/python -m bench.kpis                      # JSON to stdout
    .venv/bin/python -m bench.kpis --doc                # also rewrites its section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.docs import write_section
from gateway.calendars import build_calendars
from gateway.config import load_config
from gateway.console.accounts import add_user
from gateway.kpi_metrics import KpiCollector
from gateway.kpis import KpiClock, compute
from gateway.runtime import build_runtime
from gateway.storage.db import utcnow
from gateway.web import create_app

CHANNELS = (("sms", "sms-main"), ("whatsapp", "wa"), ("email", "mail"), ("slack", "slack"), ("messenger", "fb"))
LANGUAGES = ("en", "es", "de", None)
CONFIG = """
storage: {{url: "sqlite:///{db}"}}
server: {{listen: "127.0.0.1:0", public_url: "https://gw.example.com"}}
channels:
  sms-main: {{type: twilio, account_sid: "AC{sid}", auth_token: "{token}"}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [sms-main], to: trial}}
business_hours:
  office: {{timezone: Europe/Berlin, hours: {{mon-fri: ["09:00-18:00"]}}}}
kpis: {{business_hours: office}}
"""


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores a UTC time in SQLite


def _rows(conversations: int, days: int, now: datetime, rng: random.Random,
          seconds: Callable[[str, datetime, datetime], float]) -> Iterator[tuple[str, list[Any]]]:
    """Rows per table, in batches; each conversation's durations measured as the pipeline would (``seconds``)."""
    start = now - timedelta(days=days)
    span = days * 86400
    batch: dict[str, list[Any]] = {"conversations": [], "messages": [], "acknowledgements": [], "surveys": []}
    number = 0
    for index in range(conversations):
        cid, customer = f"c{index:09d}", f"u{index % 100_000:07d}"
        channel, connector = CHANNELS[index % len(CHANNELS)]
        opened = start + timedelta(seconds=rng.random() * span)
        solved = opened + timedelta(hours=rng.random() * 48) if rng.random() < 0.6 else None
        answered = rng.random() < 0.8
        first_reply, switches, previous = None, 0, connector
        for position in range(5):
            number += 1
            at = opened + timedelta(minutes=position * rng.random() * 90)
            inbound = position < 3
            via = CHANNELS[(index + 1) % len(CHANNELS)][1] if inbound and position and rng.random() < 0.05 \
                else connector
            if inbound:
                switches += via != previous
                previous = via
            rule = "new" if position == 0 else "continuity" if inbound else "reply" if answered else "acknowledgement"
            if rule == "reply" and first_reply is None:
                first_reply = at
            batch["messages"].append((f"m{number:010d}", 1, via, f"p{number}", customer, cid, rule,
                                      "inbound" if inbound else "outbound", "{}", _stamp(at), _stamp(at)))
        batch["conversations"].append((
            cid, customer, channel, connector, "open", _stamp(opened), _stamp(opened),
            LANGUAGES[index % len(LANGUAGES)], _stamp(solved) if solved else None,
            _stamp(first_reply) if first_reply else None,
            seconds(connector, opened, first_reply) if first_reply else None,
            seconds(connector, opened, solved) if solved else None, switches))
        if index % 2 == 0:
            batch["acknowledgements"].append((cid, customer, "m", connector, "trial", 0, "sent", _stamp(opened),
                                              _stamp(opened), _stamp(opened)))
        if index % 10 == 0 and solved:
            batch["surveys"].append(("trial", cid, customer, connector, "csat", "written", _stamp(solved),
                                     _stamp(solved + timedelta(hours=1)), rng.randint(1, 5), 1, _stamp(solved)))
        if len(batch["messages"]) >= 50_000:
            yield from batch.items()
            batch = {name: [] for name in batch}
    yield from batch.items()


INSERTS = {
    "conversations": "INSERT INTO conversations (id, customer_id, channel, connector, status, created_at, "
                     "last_activity_at, language, solved_at, first_reply_at, first_response_seconds, "
                     "resolution_seconds, switches) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "messages": "INSERT INTO messages (id, inbox_id, connector, provider_message_id, customer_id, conversation_id, "
                "thread_rule, direction, data, received_at, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "acknowledgements": "INSERT INTO acknowledgements (conversation_id, customer_id, message_id, channel, crm, rule, "
                        "status, acknowledged_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
    "surveys": "INSERT INTO surveys (crm, conversation_id, customer_id, channel, rule, status, asked_at, answered_at, "
               "rating, attempts, available_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
}


def generate(path: Path, conversations: int, days: int, now: datetime,
             seconds: Callable[[str, datetime, datetime], float], seed: int = 14) -> dict[str, int]:
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany("INSERT INTO customers (id, created_at, updated_at) VALUES (?,?,?)",
                       [(f"u{n:07d}", _stamp(now), _stamp(now)) for n in range(min(conversations, 100_000))])
        inbox = ("INSERT INTO inbox (connector, provider_id, kind, content_type, headers, body, public_url, "
                 "received_at, status, attempts, available_at, keyed) VALUES (?,?,?,?,?,?,?,?,?,?,?,0)")
        db.execute(inbox, ("seed", "seed", "message", "text/plain", "{}", b"", "-", _stamp(now), "done", 0,
                           _stamp(now)))
        db.executemany(inbox, [(CHANNELS[n % 5][1], f"w{n}", "message", "text/plain", "{}", b"", "-",
                                _stamp(now - timedelta(minutes=n)), "pending", 0, _stamp(now)) for n in range(200)])
        db.executemany("INSERT INTO dead_letters (stage, source_id, target, error_class, reason, attempts, "
                       "created_at, resolution) VALUES ('pipeline', 1, ?, 'permanent', 'bench', 1, ?, ?)",
                       [(CHANNELS[n % 5][1], _stamp(now - timedelta(hours=n)), None if n % 3 else "replayed")
                        for n in range(2000)])
    counts: dict[str, int] = {}
    for table, rows in _rows(conversations, days, now, rng, seconds):
        with db:
            db.executemany(INSERTS[table], rows)
        counts[table] = counts.get(table, 0) + len(rows)
    with db:
        db.execute("ANALYZE")
    db.close()
    return counts


def _median_seconds(action: Callable[[], object], rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


def run(conversations: int, days: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-kpis-") as folder:
        base = Path(folder)
        path = base / "config.yaml"
        path.write_text(CONFIG.format(db=base / "gateway.db", sid="B" * 32, token="0" * 32), encoding="utf-8")
        config = load_config(path)
        runtime = build_runtime(config, http=requests.Session())  # migrates the empty database
        with runtime.engine.begin() as conn:
            add_user(conn, "lead", "viewer", "bench password 0123")
        now = utcnow()
        began = time.perf_counter()
        counts = generate(base / "gateway.db", conversations, days, now,
                          KpiClock.for_settings(config.settings).seconds)
        generated = time.perf_counter() - began
        app = create_app(runtime)
        client = app.test_client()
        login = client.get("/admin/login").get_data(as_text=True)
        token = login.split('name="csrf_token" value="')[1].split('"')[0]
        assert client.post("/admin/login", data={"name": "lead", "password": "bench password 0123",
                                                  "csrf_token": token}).status_code == 302

        def overview() -> None:
            answer = client.get("/admin/")
            assert answer.status_code == 200 and "Last 30 days" in answer.get_data(as_text=True)

        settings = config.settings
        calendars = build_calendars(settings.business_hours)

        def period(span: timedelta) -> Callable[[], object]:
            def once() -> object:
                with runtime.engine.connect() as conn:
                    return compute(conn, [(now - span, now)], settings.kpis, calendars)
            return once

        def scrape() -> None:
            KpiCollector.for_settings(runtime.engine, settings).collect().__next__()

        warm = KpiCollector.for_settings(runtime.engine, settings)
        warm_now = [utcnow()]
        warm.clock = lambda: warm_now[0]
        # in service the scrapes count new messages as they come (SQLite); here the bulk load's, once, untimed
        warm.collect().__next__()

        def scrape_again() -> None:
            """A process that scraped before, its cache expired."""
            warm_now[0] += timedelta(seconds=settings.kpis.cache_seconds)
            warm.collect().__next__()

        results = {
            "load_average_before": [round(n, 1) for n in os.getloadavg()],
            "rows": counts, "generate_s": round(generated, 1), "rounds": rounds,
            "overview_page": _median_seconds(overview, rounds),
            "kpis_1d": _median_seconds(period(timedelta(days=1)), rounds),
            "kpis_7d": _median_seconds(period(timedelta(days=7)), rounds),
            "kpis_30d": _median_seconds(period(timedelta(days=30)), rounds),
            "metrics_all_time_cold": _median_seconds(scrape, rounds),
            "metrics_all_time_warm": _median_seconds(scrape_again, rounds),
            "load_average_after": [round(n, 1) for n in os.getloadavg()],
        }
        runtime.close()
        return results


def _doc(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows = results["rows"]
    lines = [
        "## KPIs", "",
        f"`python -m bench.kpis --doc`: a SQLite database generated with bulk inserts after the real migrations: "
        f"{rows['messages']:,} messages in {rows['conversations']:,} conversations over {args.days} days ending at "
        f"the run (five channels, four languages, 80% answered, 60% solved, one customer message in 20 on another "
        f"channel), {rows['acknowledgements']:,} acknowledgements, {rows['surveys']:,} survey answers, 2,000 dead "
        f"letters, 200 waiting inbox rows; generated in {results['generate_s']} s. First response and resolution "
        "are counted in a Mon-Fri 09:00-18:00 Europe/Berlin calendar on every channel (the costlier case). Median "
        f"(and slowest) of {results['rounds']} runs on this 2-core machine, shared with other work:", "",
        "| what | median s | slowest s |", "|---|---:|---:|",
    ]
    labels = {"overview_page": "console overview `/admin/` (day, week, month, 30 daily points per channel), "
                               "logged in, through Flask",
              "kpis_1d": "`gateway kpis --since 24h` computation", "kpis_7d": "`gateway kpis --since 7d` computation",
              "kpis_30d": "`gateway kpis --since 30d` computation",
              "metrics_all_time_cold": "`/metrics` KPI families, all time, cache cold (then reused for "
                                       "`kpis.cache_seconds`)",
              "metrics_all_time_warm": "`/metrics` KPI families, all time, again in the same process once "
                                       "`kpis.cache_seconds` passed"}
    for key, label in labels.items():
        lines.append(f"| {label} | {results[key]['median_s']} | {results[key]['max_s']} |")
    lines += ["", "What makes it fast enough: a conversation's first response and resolution times (in the calendar's "
              "open seconds) and its channel switches are measured once, when the reply, the solved event or the "
              "customer's message is stored, and kept on the conversation (migration 0016), so a period is one "
              "range scan of `conversations.created_at` and `/metrics` counts its histograms in SQL; messages are "
              "counted from the covering index `messages (received_at, conversation_id, direction, connector)` "
              "(SQLite reads the period's range of it, then groups); `dead_letters`, `acknowledgements` and "
              "`surveys` are read by time through their own "
              "indexes. `/metrics` reads all time from `kpi_totals`, which triggers on messages, acknowledgements "
              "and conversations keep as rows are added, changed and removed (migration 0019; they ran during the "
              "bulk load too). On SQLite messages have no insert trigger (it would journal every insert, about 20 "
              "µs a message): a scrape counts the messages above the rowid the last one reached and moves it (the "
              "bulk load's once, before the timing). A scrape sums a few hundred rows, counts the rows dated after "
              "it (none here) and the survey answers, so a process's first scrape costs what a later one does; each "
              "process reuses its read for `kpis.cache_seconds` (30). Load average (1, 5, 15 min) before and after: "
              f"{results['load_average_before']} and {results['load_average_after']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=200_000, help="five messages each")
    parser.add_argument("--days", type=int, default=365, help="history the conversations are spread over")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--doc", action="store_true", help="rewrite the KPIs section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = run(args.conversations, args.days, args.rounds)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if args.doc:
        write_section("kpis", _doc(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
