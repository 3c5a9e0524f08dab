"""Run the ingest and pipeline benchmarks and rewrite their section of docs/benchmarks.md.

    .venv/bin/python -m bench                      # full run (about 4-5 minutes on 2 cores)
    .venv/bin/python -m bench --quick              # smaller, about 1.5 minutes
    .venv/bin/python -m bench --variant 1,1,full   # add ingest rows: PROCESSES,THREADS,SYNCHRONOUS
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ingest, pipeline
from bench.docs import write_section

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RATIO_TARGET = 0.7
P99_TARGET_MS = 20.0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(ingest_rows: list[dict[str, Any]], pipe: dict[str, Any], command: str, raw_name: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    head = ingest_rows[0]
    s = head["settings"]
    lines = [
        "## Webhook ingest and pipeline",
        "",
        "The gateway and the bare baseline run side by side in one run; rounds alternate between them.",
        "",
        f"- Date: {now}",
        f"- Machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), {cpu}, "
        f"Linux {platform.release()}",
        f"- Python {platform.python_version()}; code at commit `{_commit()}`",
        f"- Command: `{command}`",
        f"- Raw figures: `{raw_name}` (JSON, written next to this page)",
        "",
        "### Webhook ingest",
        "",
        "Signed Twilio SMS webhooks (unique MessageSid each, `X-Twilio-Signature` over `public_url` + "
        "`/hooks/sms-main`)",
        "sent over keep-alive HTTP/1.1 to 127.0.0.1 by `bench/loadgen.py` in its own process. **gateway** is",
        "`gateway serve -c CONFIG` (gunicorn, verify with twilio `RequestValidator`, store in the inbox, metrics);",
        "**bare** (`bench/bare.py`) is a Flask endpoint served by the same gunicorn settings",
        "(`GatewayServer.load_config`) that reads MessageSid and does one INSERT ... ON CONFLICT DO NOTHING into a",
        "table shaped like the inbox over a connection with the same PRAGMAs (WAL, `synchronous`, busy_timeout),",
        "then commits. Both use SQLite in a temp folder.",
        "",
        f"- Throughput: closed loop, {s['concurrency']} connections, {s['rounds']} alternating rounds of "
        f"{s['round_seconds']:g} s per server; median requests/s (2xx only).",
        f"- Latency: open loop at {s['rate']:g} requests/s for {s['latency_seconds']:g} s, "
        f"{s['latency_rounds']} alternating round(s) per server; latency runs from each request's *scheduled* "
        "send time to the end of its response (no coordinated omission); median of the rounds' p50/p99.",
        "- No loss: after the run, inbox rows must equal the 2xx answers counted by the load generator.",
        "",
        "| server settings | gateway req/s | bare req/s | ratio (target >= 0.7) | median of per-round ratios "
        "| gateway p50 / p99 ms "
        f"@ {s['rate']:g}/s | bare p50 / p99 ms | p99 target < 20 ms | no loss (rows = 2xx) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in ingest_rows:
        g, b = row["gateway"], row["bare"]
        lines.append(
            f"| {row['settings']['label']} | {g['rps_median']:.0f} | {b['rps_median']:.0f} | "
            f"{row['ratio_rps']:.2f} ({_verdict(row['ratio_rps'] >= RATIO_TARGET)}) | "
            f"{statistics.median(row['ratio_rps_per_round']):.2f} | "
            f"{g['p50_ms_median']:.1f} / {g['p99_ms_median']:.1f} | {b['p50_ms_median']:.1f} / "
            f"{b['p99_ms_median']:.1f} | {_verdict(g['p99_ms_median'] < P99_TARGET_MS)} | "
            f"{'yes' if g['no_loss'] else 'NO'} ({g['inbox_rows']} = {g['ok_total']}); "
            f"bare {'yes' if b['no_loss'] else 'NO'} |")
    lines += ["", "Per-round throughput (gateway / bare, in run order):", ""]
    for row in ingest_rows:
        pairs = ", ".join(f"{g:.0f}/{b:.0f}" for g, b in zip(row["gateway"]["rps_rounds"], row["bare"]["rps_rounds"],
                                                            strict=True))
        lines.append(f"- {row['settings']['label']}: {pairs}; ratios {row['ratio_rps_per_round']}")
    lines += ["", "Per-round p99 at 500 requests/s, ms (gateway / bare, in run order; the medians above come from "
              "these). In brackets, what `bench/stalls.py` saw beside that round: the worst machine stall (a probe "
              "sleeping 1 ms at a time woke that late; every process on the machine, servers and load generator "
              "included, was held up as long) and the slowest fsync (4 KiB appended and fsynced every 50 ms beside "
              "the databases, as each commit with `synchronous=full` is), in ms:", ""]
    for row in ingest_rows:
        pairs = ", ".join(f"{_with_stall(row['gateway'], i)} / {_with_stall(row['bare'], i)}"
                          for i in range(len(row["gateway"]["p99_ms_rounds"])))
        lines.append(f"- {row['settings']['label']}: {pairs}")
    st, e2e = pipe["stages"], pipe["end_to_end"]
    lines += [
        "",
        "### Pipeline",
        "",
        f"{pipe['messages']} signed Twilio SMS rows from {pipe['senders']} distinct senders stored with "
        "`Queues.store_inbox`, then processed into the jsonl CRM (fsync per record), SQLite "
        f"`synchronous={pipe['synchronous']}`.",
        "",
        "| measurement | messages | seconds | messages/s |",
        "|---|---:|---:|---:|",
        f"| pipeline stage alone (1 thread, `drain_once`): inbox -> outbox | {st['processed']} | "
        f"{st['pipeline_s']:.1f} | {st['pipeline_mps']:.0f} |",
        f"| delivery stage alone (1 `DeliveryWorker`, `drain_once`): outbox -> jsonl line | {st['delivered']} | "
        f"{st['delivery_s']:.1f} | {st['delivery_mps']:.0f} |",
        f"| end to end, `WorkerProcess` ({e2e['threads']}): inbox -> jsonl line | {e2e['check']['lines']} | "
        f"{e2e['seconds']:.1f} | {e2e['mps']:.0f} |",
        "",
        f"jsonl check: stages {st['check']['lines']} lines / {st['check']['distinct']} distinct; end to end "
        f"{e2e['check']['lines']} lines / {e2e['check']['distinct']} distinct (expected {pipe['messages']} each).",
        "",
    ]
    return "\n".join(lines)


def _with_stall(server: dict[str, Any], index: int) -> str:
    p99 = f"{server['p99_ms_rounds'][index]:.1f}"
    stalls, fsyncs = server.get("stall_max_ms_rounds"), server.get("fsync_max_ms_rounds")  # newer runs only
    if stalls and fsyncs:
        return f"{p99} [stall {stalls[index]:.0f}, fsync {fsyncs[index]:.0f}]"
    return f"{p99} [stall {stalls[index]:.0f}]" if stalls else p99


def parse_variant(text: str) -> tuple[int, int, str]:
    processes, threads, synchronous = text.split(",")
    if synchronous not in ("full", "normal"):
        raise argparse.ArgumentTypeError("SYNCHRONOUS is full or normal")
    return int(processes), int(threads), synchronous


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and messages")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        metavar="PROCESSES,THREADS,SYNC", help="an extra ingest row (repeatable)")
    parser.add_argument("--messages", type=int, help="pipeline messages (default 5000; 1000 with --quick)")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended to the page (analysis, profiles)")
    parser.add_argument("--ingest-from", type=Path, help="reuse the ingest rows of an earlier run's JSON file")
    parser.add_argument("--output", type=Path, default=DOC)
    args = parser.parse_args(argv)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python -m bench {argv_text}".strip()

    if args.quick:
        base = ingest.Settings(rounds=3, round_seconds=2.0, latency_seconds=5.0, latency_rounds=1)
    else:
        base = ingest.Settings()
    raw = args.output.with_suffix(".json")
    rows = json.loads(args.ingest_from.read_text(encoding="utf-8"))["ingest"] if args.ingest_from else []
    for processes, threads, synchronous in (
            [] if args.ingest_from else [(base.processes, base.threads, base.synchronous), *args.variant]):
        settings = ingest.Settings(processes, threads, synchronous, base.concurrency, base.rounds,
                                   base.round_seconds, base.rate, base.latency_seconds, base.latency_rounds)
        print(f"ingest: {settings.label}", file=sys.stderr, flush=True)
        rows.append(ingest.run(settings))
        raw.write_text(json.dumps({"ingest": rows, "pipeline": None}, indent=2) + "\n", encoding="utf-8")
    messages = args.messages or (1000 if args.quick else 5000)
    print(f"pipeline: {messages} messages", file=sys.stderr, flush=True)
    pipe = pipeline.run(messages, senders=max(1, messages // 5), timeout=max(120.0, messages / 10))

    raw.write_text(json.dumps({"ingest": rows, "pipeline": pipe}, indent=2) + "\n", encoding="utf-8")
    page = render(rows, pipe, command, raw.name)
    if args.notes is not None:
        page += "\n" + args.notes.read_text(encoding="utf-8")
    write_section("foundation", page, args.output)
    print(page)
    failed = [row["settings"]["label"] for row in rows if not (row["gateway"]["no_loss"] and row["bare"]["no_loss"])]
    if failed:
        sys.exit(f"lost webhooks in: {', '.join(failed)}")


if __name__ == "__main__":
    main()
