"""Pipeline benchmark: a pre-filled inbox of signed Twilio SMS rows, processed into the jsonl CRM.

Two measurements on fresh SQLite databases in a temp folder:

- stages: the pipeline stage alone (inbox -> customer, conversation, mapping -> outbox) drained with
  ``drain_once`` in one thread, then the delivery stage alone (outbox -> jsonl line, one fsync per batch); each
  worker is built before its clock starts, so the pipeline's figure leaves out loading the language model (about
  1 s, once per process), as the end-to-end figure does by starting at the first claim;
- end to end: the worker processes ``gateway run`` starts (``workers.processes``: by default a pipeline process
  and a delivery process; ``--processes one`` for both stages in one), from the moment they claim the first row
  of a full inbox until the jsonl file holds every message.

Each run then checks the jsonl file has exactly N lines and N distinct messages.

    .venv/bin/python -m bench.pipeline --messages 5000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.loadgen import ACCOUNT_SID, AUTH_TOKEN, CHANNEL, signed_requests
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.server import worker_command, worker_stages
from gateway.storage.tables import inbox
from gateway.worker import drain_once

PUBLIC_URL = "http://127.0.0.1:8080"
ROOT = Path(__file__).resolve().parent.parent


def write_config(folder: Path, synchronous: str, processes: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    layout = f", processes: {processes}" if processes else ""
    path.write_text(f"""
storage: {{url: "sqlite:///{folder / 'gateway.db'}", sqlite_synchronous: {synchronous}}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05{layout}}}
logging: {{level: WARNING}}
data_dir: {folder}
channels:
  {CHANNEL}: {{type: twilio, account_sid: "{ACCOUNT_SID}", auth_token: "{AUTH_TOKEN}"}}
crms:
  trial: {{type: jsonl, path: {folder / 'crm.jsonl'}}}
routes:
  - {{from: [{CHANNEL}], to: trial}}
""", encoding="utf-8")
    return path


def prefill(runtime: Runtime, messages: int, senders: int, run_id: int) -> None:
    """Store ``messages`` signed inbound SMS webhooks from ``senders`` distinct numbers, as ingress does."""
    for raw in signed_requests("127.0.0.1", 8080, PUBLIC_URL, run_id, messages, senders=senders):
        head, body = raw.split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        sid = body.split(b"MessageSid=", 1)[1].split(b"&", 1)[0].decode()
        runtime.queues.store_inbox(CHANNEL, [InboxItem(sid, body, "application/x-www-form-urlencoded", "message")],
                                   headers, f"{PUBLIC_URL}/hooks/{CHANNEL}")


def drain(stage: Any) -> None:
    """Run ``drain_once`` until a claim comes back empty (it counts batches or rows, depending on the stage)."""
    while drain_once(stage) > 0:
        pass


def finished_inbox_rows(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(inbox.c.status.in_(("done", "ignored")))).scalar_one())


def jsonl_check(path: Path, messages: int) -> dict[str, Any]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    distinct = {json.loads(line)["message"]["provider_message_id"] for line in lines}
    return {"lines": len(lines), "distinct": len(distinct), "exact": len(lines) == len(distinct) == messages}


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def run_stages(base: Path, messages: int, senders: int, synchronous: str) -> dict[str, Any]:
    config = load_config(write_config(base / "stages", synchronous))
    runtime = build_runtime(config)
    try:
        prefill(runtime, messages, senders, run_id=1)
        worker = PipelineWorker(runtime, "bench-pipeline")  # loads the language model (about 1 s), once per process
        started = time.perf_counter()
        drain(worker)
        pipeline_s = time.perf_counter() - started
        processed = finished_inbox_rows(runtime)
        delivery = DeliveryWorker(runtime, "bench-delivery")
        started = time.perf_counter()
        drain(delivery)
        delivery_s = time.perf_counter() - started
        delivered = count_lines(base / "stages" / "crm.jsonl")
    finally:
        runtime.close()
    check = jsonl_check(base / "stages" / "crm.jsonl", messages)
    return {"processed": processed, "delivered": delivered,
            "pipeline_s": round(pipeline_s, 2), "pipeline_mps": round(processed / pipeline_s, 1),
            "delivery_s": round(delivery_s, 2), "delivery_mps": round(delivered / delivery_s, 1), "check": check}


def start_workers(config_path: Path, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """The worker processes as ``gateway run`` starts them for this config (one per stage, or one for both)."""
    base = [sys.executable, "-m", "gateway"]
    return [subprocess.Popen(worker_command(base, config_path, stage), cwd=ROOT,
                             stdout=(log_dir / f"work-{stage or 'all'}.log").open("wb"), stderr=subprocess.STDOUT)
            for stage in worker_stages(load_config(config_path))]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM (they drain), then their exit codes."""
    for proc in workers:
        proc.terminate()
    return [proc.wait(timeout=60) for proc in workers]


def first_claim(runtime: Runtime, deadline: float) -> float:
    """When a worker first claimed an inbox row (polled every 2 ms): the start of the measured run, past the
    processes' start-up."""
    query = select(inbox.c.id).where(inbox.c.attempts > 0).limit(1)
    while time.perf_counter() < deadline:
        with runtime.engine.connect() as conn:
            if conn.execute(query).first() is not None:
                return time.perf_counter()
        time.sleep(0.002)
    return time.perf_counter()


def run_end_to_end(base: Path, messages: int, senders: int, synchronous: str, timeout: float,
                   processes: str | None = None) -> dict[str, Any]:
    config_path = write_config(base / "e2e", synchronous, processes)
    config = load_config(config_path)
    runtime = build_runtime(config)
    output = base / "e2e" / "crm.jsonl"
    try:
        prefill(runtime, messages, senders, run_id=2)
        workers = start_workers(config_path, base / "e2e")
        try:
            deadline = time.perf_counter() + timeout
            started = first_claim(runtime, deadline)
            while count_lines(output) < messages and time.perf_counter() < deadline:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            codes = stop_workers(workers)
    finally:
        runtime.close()
    check = jsonl_check(output, messages)
    settings = config.settings.workers
    return {"seconds": round(elapsed, 2), "mps": round(check["lines"] / elapsed, 1), "check": check,
            "timed_out": check["lines"] < messages, "exit_codes": codes, "processes": settings.processes,
            "threads": f"{settings.pipeline_threads} pipeline + {settings.delivery_threads} delivery"}


def run(messages: int = 5000, senders: int = 1000, synchronous: str = "full", timeout: float = 120.0,
        workdir: Path | None = None, processes: str | None = None) -> dict[str, Any]:
    """Both measurements; raises AssertionError when a jsonl file is not exactly N distinct messages."""
    base = Path(workdir or tempfile.mkdtemp(prefix="gw-bench-pipeline-"))
    stages = run_stages(base, messages, senders, synchronous)
    end_to_end = run_end_to_end(base, messages, senders, synchronous, timeout, processes)
    result = {"messages": messages, "senders": senders, "synchronous": synchronous, "workdir": str(base),
              "stages": stages, "end_to_end": end_to_end}
    for name in ("stages", "end_to_end"):
        check = result[name]["check"]
        assert check["exact"], f"{name}: jsonl has {check['lines']} lines, {check['distinct']} distinct, " \
                               f"expected {messages}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--senders", type=int, default=1000)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--processes", choices=["one", "per_stage"], default=None,
                        help="workers.processes for the end-to-end run; default the config's default")
    args = parser.parse_args()
    print(json.dumps(run(args.messages, args.senders, args.synchronous, args.timeout, processes=args.processes),
                     indent=2))


if __name__ == "__main__":
    sys.exit(main())
