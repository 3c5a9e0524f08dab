"""Retention benchmark: steady traffic over simulated days, with retention in force and without, side by side.

Two gateways on fresh SQLite databases get the same traffic: every simulated day ``--per-day`` Twilio SMS from a
population of ``--customers`` people (and a delivery status for every other one) are stored in the inbox with that
day's times, processed into the jsonl CRM by the real pipeline and delivery workers, and, on the retaining side only,
followed by a retention run at the day's end (``Retention.run(now=...)``). Sizes are read after a WAL checkpoint:
the database file, the pages in use, and the rows of every table retention touches.

The simulated clock starts at the real time of the run and moves forward a day at a time; stored rows are made due at
once (a row stamped in the future would otherwise wait for its time). Rows the workers stamp with the real clock
(delivery logs) are therefore as old as the run's start in simulated time: they count as due from the first day past
their period.

    .venv/bin/python -m bench.retention                      # 60 days, JSON to stdout
    .venv/bin/python -m bench.retention --doc                # also rewrites its section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select, update

from bench.docs import write_section
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.retention import retention_for
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import (
    conversations,
    crm_links,
    customers,
    delivery_log,
    inbox,
    messages,
    outbox,
    provider_statuses,
)
from gateway.worker import drain_once

ACCOUNT_SID = "AC" + "B" * 32
CHANNEL = "sms-bench"
TABLES = {"inbox": inbox, "messages": messages, "outbox": outbox, "delivery_log": delivery_log,
          "provider_statuses": provider_statuses, "conversations": conversations, "crm_links": crm_links,
          "customers": customers}
WORDS = ("order", "parcel", "refund", "delivery", "invoice", "address", "payment", "tracking", "courier",
         "damaged", "replacement", "warranty", "account", "password", "receipt", "cancel", "subscription",
         "store", "weekend", "morning", "please", "thanks", "again", "still")


def write_config(folder: Path, retention: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(f"""
storage: {{url: "sqlite:///{folder / 'gateway.db'}", sqlite_synchronous: normal}}
server: {{public_url: "http://127.0.0.1:8080"}}
logging: {{level: WARNING}}
data_dir: {folder}
retention: {retention}
channels:
  {CHANNEL}: {{type: twilio, account_sid: "{ACCOUNT_SID}", auth_token: "bench-token"}}
crms:
  trial: {{type: jsonl, path: {folder / 'crm.jsonl'}}}
routes:
  - {{from: [{CHANNEL}], to: trial}}
""", encoding="utf-8")
    return path


def day_traffic(rng: random.Random, day: int, per_day: int, population: int) -> list[InboxItem]:
    items = []
    for n in range(per_day):
        sid = f"SM{day:08x}{n:024x}"
        sender = f"+1415{5000000 + rng.randrange(population):07d}"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": ACCOUNT_SID, "From": sender, "To": "+15005550006",
                "Body": text, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}
        items.append(InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded"))
        if n % 2:
            status = {"MessageSid": f"SM{day:08x}{n:024x}"[::-1].upper()[:34], "MessageStatus": "delivered",
                      "SmsStatus": "delivered", "AccountSid": ACCOUNT_SID}
            items.append(InboxItem(f"{status['MessageSid']}:status:delivered", urlencode(status).encode(),
                                   "application/x-www-form-urlencoded", "status"))
    return items


class Side:
    """One gateway: its runtime, and a retention run at each day's end when ``retains``."""

    def __init__(self, folder: Path, retention: str, retains: bool) -> None:
        self.folder = folder
        self.runtime: Runtime = build_runtime(load_config(write_config(folder, retention)))
        self.retains = retains
        self.seconds = {"ingest": 0.0, "pipeline": 0.0, "retention": 0.0}

    def day(self, items: list[InboxItem], start: datetime) -> None:
        rt = self.runtime
        began = time.perf_counter()
        step = timedelta(days=1) / max(1, len(items))
        for position in range(0, len(items), 50):
            rt.queues.store_inbox(CHANNEL, items[position:position + 50], {}, "http://127.0.0.1:8080/hooks/x",
                                  received_at=start + step * position)
        with rt.engine.begin() as conn:  # rows are due when stored: future-dated ones would wait for their time
            conn.execute(update(inbox).where(inbox.c.status == "pending").values(available_at=utcnow()))
        self.seconds["ingest"] += time.perf_counter() - began
        began = time.perf_counter()
        pipeline, delivery = PipelineWorker(rt, "bench-p"), DeliveryWorker(rt, "bench-d")
        while drain_once(pipeline) + drain_once(delivery):
            pass
        self.seconds["pipeline"] += time.perf_counter() - began
        if self.retains:
            began = time.perf_counter()
            retention_for(rt).run(now=start + timedelta(days=1))
            self.seconds["retention"] += time.perf_counter() - began

    def sizes(self) -> dict[str, Any]:
        database = self.folder / "gateway.db"
        with sqlite3.connect(database) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size, pages, free = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                                      for name in ("page_size", "page_count", "freelist_count"))
        with self.runtime.engine.connect() as conn:
            rows = {name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                    for name, table in TABLES.items()}
        return {"file_bytes": database.stat().st_size, "pages": pages, "free_pages": free,
                "used_bytes": (pages - free) * page_size, "rows": rows}

    def close(self) -> None:
        self.runtime.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    kept = "{raw_payloads_days: null, provider_statuses_days: null, attachments_days: null, " \
           "delivery_logs_days: null, dead_letters_days: null}"
    retained = (f"{{raw_payloads_days: {args.keep_days}, provider_statuses_days: {args.keep_days}, "
                f"attachments_days: {args.keep_days}, message_text_days: {args.keep_days}, "
                f"delivery_logs_days: {args.keep_days}, dead_letters_days: {args.keep_days}, "
                f"conversations_days: {args.conversation_days}}}")
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        sides = {"kept": Side(Path(tmp) / "kept", kept, False),
                 "retained": Side(Path(tmp) / "retained", retained, True)}
        try:
            start = utcnow()
            for day in range(args.days):
                items = day_traffic(random.Random(args.seed * 100_003 + day), day, args.per_day, args.customers)
                for side in sides.values():
                    side.day(items, start + timedelta(days=day))
                if (day + 1) % args.every == 0 or day == 0:
                    samples.append({"day": day + 1, **{name: side.sizes() for name, side in sides.items()}})
            seconds = {name: {k: round(v, 1) for k, v in side.seconds.items()} for name, side in sides.items()}
        finally:
            for side in sides.values():
                side.close()
    return {"settings": {key: getattr(args, key) for key in (
        "days", "per_day", "customers", "keep_days", "conversation_days", "seed")},
        "retention": retained, "samples": samples, "seconds": seconds}


def render(figures: dict[str, Any], command: str) -> str:
    s = figures["settings"]
    mib = 2 ** 20
    lines = [
        "## Retention",
        "",
        f"`{command}`: {s['per_day']} SMS a simulated day (and a delivery status for every other one) from "
        f"{s['customers']} customers, for {s['days']} days, through the real pipeline and delivery workers into the "
        "jsonl CRM, on two fresh SQLite databases given the same traffic: one keeping everything, one with "
        f"`retention: {figures['retention']}` and a retention run at the end of each simulated day. Sizes after a "
        "WAL checkpoint; *in use* is the file's pages less its free list (SQLite reuses freed pages rather than "
        "shrinking the file).",
        "",
        "| day | kept: file MiB | kept: in use MiB | kept: inbox / messages / outbox / delivery log rows "
        "| retained: file MiB | retained: in use MiB | retained: inbox / messages / outbox / delivery log rows |",
        "|---:|---:|---:|---|---:|---:|---|",
    ]
    for sample in figures["samples"]:
        cells = [str(sample["day"])]
        for name in ("kept", "retained"):
            side = sample[name]
            rows = side["rows"]
            cells += [f"{side['file_bytes'] / mib:.2f}", f"{side['used_bytes'] / mib:.2f}",
                      f"{rows['inbox']:,} / {rows['messages']:,} / {rows['outbox']:,} / {rows['delivery_log']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    last = figures["samples"][-1]
    lines += [
        "",
        f"Customers at the end: {last['kept']['rows']['customers']:,} kept, "
        f"{last['retained']['rows']['customers']:,} retained (people are forgotten on request only, "
        "`gateway customers forget`); conversations "
        f"{last['kept']['rows']['conversations']:,} and {last['retained']['rows']['conversations']:,}; "
        f"provider statuses {last['kept']['rows']['provider_statuses']:,} and "
        f"{last['retained']['rows']['provider_statuses']:,}.",
        "",
        "Delivery log rows are stamped by the workers' real clock, which stays at the run's start while the "
        "simulated days advance: they all fall due at once on the first day past their period (in service they go "
        "day by day, like the rest). Messages stay as long as their conversation (`conversations_days`): a customer "
        "writing every few days keeps one going, hence more messages than the other periods alone would keep.",
        "",
        f"Seconds spent: {json.dumps(figures['seconds'])} (ingest, pipeline and delivery, retention runs).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=60, help="simulated days")
    parser.add_argument("--per-day", type=int, default=100, help="SMS a simulated day")
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--keep-days", type=int, default=14, help="every period but conversations, retaining side")
    parser.add_argument("--conversation-days", type=int, default=21, help="conversations_days, retaining side")
    parser.add_argument("--every", type=int, default=5, help="sample sizes every this many days")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--doc", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args(argv)
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.doc:
        write_section("retention", render(figures, "python -m bench.retention " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
