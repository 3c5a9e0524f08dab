"""Throughput: how the stages after ingest keep up with it; rewrites the "throughput" section of docs/benchmarks.md.

In one run, on SQLite in temp folders, each round measures side by side:

- ingest: `gateway serve` under closed-loop signed Twilio webhooks (requests/s, as `bench.ingest`);
- the pipeline stage alone, the delivery stage alone and end to end (a full inbox -> jsonl CRM with fsync, the
  worker processes as `gateway run` starts them), as `bench.pipeline`;
- the end-to-end ratio: end-to-end messages/s over that round's ingest requests/s.

Then latency under steady load: `gateway serve` and the worker processes as `gateway run` starts them (a pipeline
and a delivery process by default) on one config, webhooks at a fixed rate (open loop); each CRM record's latency
runs from the message's ``received_at`` (the webhook's arrival, stamped by ingress) to the moment its line is seen
in the jsonl file (polled every 2 ms). Then the email pipeline (a Dovecot mailbox
imported, then drained by the pipeline). Figures are medians of the rounds; the load average is printed beside them.

    .venv/bin/python -m bench.throughput                 # 3 rounds, about 4 minutes on 2 cores
    .venv/bin/python -m bench.throughput --rounds 1 --messages 1000 --no-write
    .venv/bin/python -m bench.throughput --processes one ...   # both stages in one worker process
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import pipeline
from bench.docs import write_section
from bench.ingest import ROOT, Server, Settings, free_port, write_config
from gateway.config import WorkersConfig

TARGET_RATIO, TARGET_PIPELINE, TARGET_EMAIL, TARGET_P99_MS = 0.8, 1000.0, 400.0, 300.0


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def ingest_round(server: Server, settings: Settings) -> float:
    return float(server.load("closed", settings)["rps"])


def rounds(count: int, messages: int, seconds: float, base: Path, processes: str | None = None
           ) -> list[dict[str, Any]]:
    settings = Settings(round_seconds=seconds)
    port = free_port()
    server = Server("gateway", [sys.executable, "-m", "gateway", "serve", "-c",
                                str(write_config(base / "ingest", port, settings))], port,
                    base / "ingest" / "gateway.db")
    results = []
    try:
        server.start(base / "ingest.log")
        server.load("closed", settings, seconds=1.0)  # warm up
        for index in range(count):
            load = load_average()
            rps = ingest_round(server, settings)
            folder = base / f"round{index}"
            stages = pipeline.run_stages(folder, messages, max(1, messages // 5), "full")
            e2e = pipeline.run_end_to_end(folder, messages, max(1, messages // 5), "full", max(120.0, messages / 5),
                                          processes)
            row = {"ingest_rps": rps, "pipeline_mps": stages["pipeline_mps"], "delivery_mps": stages["delivery_mps"],
                   "end_to_end_mps": e2e["mps"], "exact": stages["check"]["exact"] and e2e["check"]["exact"],
                   "ratio": round(e2e["mps"] / rps, 3), "load_before": load, "load_after": load_average()}
            print(f"round {index + 1}: {row}", file=sys.stderr, flush=True)
            results.append(row)
    finally:
        server.stop()
    return results


def _tail(path: Path, seen: dict[str, float], stop: threading.Event) -> None:
    """Record when each jsonl line first appears (wall clock, as ``received_at`` is)."""
    offset, partial = 0, b""
    while not stop.is_set():
        if path.exists():
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            now = time.time()
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            for line in lines:
                message = json.loads(line)["message"]
                seen[message["id"]] = now - datetime.fromisoformat(message["received_at"]).timestamp()
        stop.wait(0.002)


def latency(rate: float, seconds: float, base: Path, processes: str | None = None) -> dict[str, Any]:
    """Webhook arrival -> CRM line under an open-loop load of ``rate`` webhooks/s, once the workers are up: a second
    of the same load first, not counted, until its messages are all written (start-up, imports, the language
    model and the page cache are not what a steady load meets)."""
    settings = Settings(rate=rate, latency_seconds=seconds)
    port = free_port()
    config = write_config(base / "latency", port, settings)
    if processes:
        with config.open("a", encoding="utf-8") as handle:
            handle.write(f"workers: {{processes: {processes}}}\n")
    server = Server("gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(config)], port,
                    base / "latency" / "gateway.db")
    seen: dict[str, float] = {}
    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(base / "latency" / "crm.jsonl", seen, stop), daemon=True)
    workers: list[subprocess.Popen[bytes]] = []
    load = load_average()
    try:
        server.start(base / "latency-serve.log")
        workers = pipeline.start_workers(config, base / "latency")
        tail.start()
        warm_up = server.load("open", settings, seconds=1.0)
        deadline = time.monotonic() + 120
        while len(seen) < warm_up["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.clear()
        sent = server.load("open", settings)
        deadline = time.monotonic() + 60
        while len(seen) < sent["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        pipeline.stop_workers(workers)
        server.stop()
    tail.join()
    values = sorted(seen.values())
    return {"rate": rate, "seconds": seconds, "sent": sent["ok"], "written": len(values),
            "p50_ms": round(_percentile(values, 0.50) * 1000, 1), "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1) if values else None, "load_before": load,
            "load_after": load_average()}


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def email_rate(count: int) -> dict[str, Any]:
    """Rows/s of the pipeline over an imported mailbox of ``count`` mixed messages (as `bench.email`); the clock
    runs from the first claim to the empty inbox, the worker (and the language model it loads) built before."""
    import requests

    from bench.email import _check, _config
    from gateway.config import load_config
    from gateway.pipeline import PipelineWorker
    from gateway.runtime import build_runtime
    from gateway.storage.cursors import Cursors
    from gateway.worker import InboxWriter
    from tests.conformance.channel import drain_pipeline
    from tests.dovecot import Dovecot
    from tests.mail.corpus import mixed_mailbox

    mailbox = mixed_mailbox(count, seed="t")
    logging.getLogger("gateway").setLevel(logging.ERROR)  # the broken mails' quarantine warnings, with tracebacks
    server = Dovecot.start()
    try:
        with server.client() as client:
            for mail in mailbox:
                client.append("INBOX", mail.raw)
        with tempfile.TemporaryDirectory() as name:
            rt = build_runtime(load_config(_config(Path(name), server)), http=requests.Session())
            try:
                rt.channels["mail"].poll(InboxWriter(rt, "mail"), Cursors(rt.engine))  # type: ignore[attr-defined]
                worker = PipelineWorker(rt, "bench")  # loads the language model, before the clock starts
                load = load_average()
                started = time.perf_counter()
                drain_pipeline(rt, worker)
                elapsed = time.perf_counter() - started
                check = _check(rt, mailbox)
            finally:
                rt.close()
    finally:
        server.stop()
    return {"rows": count, "seconds": round(elapsed, 2), "rows_per_s": round(count / elapsed, 1), "ok": check["ok"],
            "load_before": load, "load_after": load_average()}


def _each(rows: list[dict[str, Any]], key: str, digits: int) -> str:
    return ", ".join(f"{row[key]:.{digits}f}" for row in rows)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(result: dict[str, Any], command: str) -> str:
    rows, lat, mail = result["rounds"], result["latency"], result["email"]
    med = {key: statistics.median(row[key] for row in rows)
           for key in ("ingest_rps", "pipeline_mps", "delivery_mps", "end_to_end_mps", "ratio")}
    loads = [row[key] for row in rows for key in ("load_before", "load_after")]
    lines = [
        "## Throughput",
        "",
        f"Written by `{command}` at commit `{result['commit']}` ({os.cpu_count()} cores, SQLite "
        f"`synchronous=full`, jsonl CRM with fsync). {result['messages']} signed Twilio SMS per pipeline run from "
        f"{max(1, result['messages'] // 5)} senders; medians of {len(rows)} round(s), each round measuring ingest "
        "and then the stages on the same machine. The machine is shared: 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} during the rounds.",
        "",
        "| measurement | median | target | per round |",
        "|---|---:|---|---|",
        f"| ingest, `gateway serve`, requests/s | {med['ingest_rps']:.0f} | | "
        f"{_each(rows, 'ingest_rps', 0)} |",
        f"| pipeline stage alone (inbox -> outbox, 1 thread), messages/s | {med['pipeline_mps']:.0f} | >= 1,000 "
        f"({_verdict(med['pipeline_mps'] >= TARGET_PIPELINE)}) | {_each(rows, 'pipeline_mps', 0)} |",
        f"| delivery stage alone (outbox -> jsonl line), messages/s | {med['delivery_mps']:.0f} | | "
        f"{_each(rows, 'delivery_mps', 0)} |",
        f"| end to end (worker processes: {result['processes']}, inbox -> jsonl line), messages/s | "
        f"{med['end_to_end_mps']:.0f} | | "
        f"{_each(rows, 'end_to_end_mps', 0)} |",
        f"| end to end / ingest of the same round | {med['ratio']:.2f} | >= 0.8 "
        f"({_verdict(med['ratio'] >= TARGET_RATIO)}) | {_each(rows, 'ratio', 2)} |",
        f"| email pipeline ({mail['rows']} mixed mails from Dovecot), rows/s | {mail['rows_per_s']:.0f} | >= 400 "
        f"({_verdict(mail['rows_per_s'] >= TARGET_EMAIL)}) | checks {'met' if mail['ok'] else '**failed**'} |",
        f"| webhook -> CRM line at {lat['rate']:.0f} messages/s for {lat['seconds']:.0f} s, p50 / p99 / max ms | "
        f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']} | p99 < 300 "
        f"({_verdict(lat['p99_ms'] < TARGET_P99_MS)}) | {lat['written']} of {lat['sent']} written; "
        f"load {lat['load_before']} -> {lat['load_after']} |",
        "",
        "Every pipeline run's jsonl file held exactly N distinct messages: "
        f"{'yes' if all(row['exact'] for row in rows) else '**no**'}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--ingest-seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--email", type=int, default=1000, help="mails in the email run")
    parser.add_argument("--processes", choices=["one", "per_stage"], default=None,
                        help="workers.processes for end to end and latency; default the config's default")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="gw-bench-metrics-"))
    base = Path(tempfile.mkdtemp(prefix="gw-bench-throughput-"))
    processes = args.processes or WorkersConfig.model_fields["processes"].default
    result: dict[str, Any] = {"commit": commit(), "messages": args.messages, "processes": processes}
    result["rounds"] = rounds(args.rounds, args.messages, args.ingest_seconds, base, processes)
    result["latency"] = latency(args.rate, args.latency_seconds, base, processes)
    print(f"latency: {result['latency']}", file=sys.stderr, flush=True)
    result["email"] = email_rate(args.email)
    print(f"email: {result['email']}", file=sys.stderr, flush=True)
    command = "python -m bench.throughput " + " ".join(sys.argv[1:] if argv is None else argv)
    page = render(result, command.strip())
    print(json.dumps(result, indent=2))
    print(page)
    if not args.no_write:
        write_section("throughput", page)


if __name__ == "__main__":
    main()
