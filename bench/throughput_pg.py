"""PostgreSQL: 1 and 2 `gateway work` processes sharing one inbox (claims with SKIP LOCKED), and the per-message
costs a scaling model needs; prints JSON (the model and its figures are in docs/benchmarks.md, "Throughput").

For each process count, a fresh database gets N signed Twilio SMS rows (N/5 senders), then P `gateway work`
processes run until the jsonl CRM (fsync per record) holds every message. CPU seconds of the workers and of the
PostgreSQL backends serving the benchmark's database (other databases' backends and the server's background
processes left out: the server is shared) are read from /proc over the same interval. A separate in-process drain
of each stage counts statements, distinct statement texts and commits per message, the server CPU its backends
spent, and the time spent inside the pipeline's storing transaction (row locks held).

    .venv/bin/python -m bench.throughput_pg --messages 2000
    GATEWAY_TEST_POSTGRES_URL='postgresql+psycopg://postgres@127.0.0.1:5432/test?prepare_threshold=none' \
        .venv/bin/python -m bench.throughput_pg --messages 2000   # the workers never prepare a statement
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event, update
from sqlalchemy.engine import make_url

from bench.pipeline import count_lines, drain, jsonl_check, prefill, write_config
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.message_store import MessageStore
from gateway.pipeline import PipelineWorker
from gateway.runtime import build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import inbox

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TICK = os.sysconf("SC_CLK_TCK")


@contextmanager
def database() -> Iterator[str]:
    url = make_url(POSTGRES_URL)
    name = f"gw_bench_{uuid.uuid4().hex[:12]}"
    admin = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cpu_seconds(names: tuple[str, ...], pids: list[int] | None = None) -> float:
    """User + system CPU seconds of the live processes named ``names`` (or with these ``pids``)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (pids is not None and int(entry.name) not in pids):
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if pids is not None or comm in names:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def backend_pids(url: str) -> list[int]:
    """The server processes connected to the database of ``url`` (asked from the server's maintenance database)."""
    parsed = make_url(url)
    admin = f"host={parsed.host} port={parsed.port or 5432} user={parsed.username} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                               (parsed.database,))]


def backend_cpu(url: str, since: dict[int, float] | None = None) -> dict[int, float]:
    """CPU seconds of each backend of ``url``'s database, minus what it had used at ``since`` (one that started
    after ``since`` counts in full)."""
    since = since or {}
    return {pid: cpu_seconds((), [pid]) - since.get(pid, 0.0) for pid in backend_pids(url)}


def config_for(folder: Path, url: str) -> Path:
    path = write_config(folder, "full")
    text = path.read_text(encoding="utf-8")
    start = text.index("storage:")
    path.write_text(text[:start] + f'storage: {{url: "{url}"}}' + text[text.index("\n", start):], encoding="utf-8")
    return path


def processes(count: int, messages: int, senders: int, timeout: float) -> dict[str, Any]:
    with database() as url, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        config = config_for(folder, url)
        runtime = build_runtime(load_config(config))
        prefill(runtime, messages, senders, run_id=3)
        with runtime.engine.begin() as conn:  # held back until the workers have started
            conn.execute(update(inbox).values(available_at=utcnow() + timedelta(days=1)))
        output = folder / "crm.jsonl"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        workers = [subprocess.Popen([sys.executable, "-m", "gateway", "work", "-c", str(config)], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
        try:
            pids = [worker.pid for worker in workers]
            idle_cpu = _settle(pids)
            with runtime.engine.begin() as conn:
                conn.execute(update(inbox).values(available_at=utcnow() - timedelta(seconds=1)))
            runtime.close()
            gw_cpu, pg_cpu = cpu_seconds((), pids), backend_cpu(url)
            load = os.getloadavg()[0]
            started = time.perf_counter()
            while count_lines(output) < messages and time.perf_counter() - started < timeout:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            gw_cpu = cpu_seconds((), pids) - gw_cpu
            pg_cpu = sum(backend_cpu(url, pg_cpu).values())  # before the workers end: their backends end with them
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
        check = jsonl_check(output, messages)
    return {"processes": count, "senders": senders, "seconds": round(elapsed, 2),
            "mps": round(check["lines"] / elapsed, 1),
            "exact": check["exact"], "gateway_cpu_ms_per_msg": round(gw_cpu / messages * 1000, 2),
            "postgres_cpu_ms_per_msg": round(pg_cpu / messages * 1000, 2), "load": round(load, 2),
            "idle_cpu_per_s": idle_cpu}


def _settle(pids: list[int], timeout: float = 60.0) -> float:
    """Wait until the started workers are idle (imports, migrations and the language model done); their idle CPU
    seconds per second."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds((), pids)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        after = cpu_seconds((), pids)
        if after - before < 0.05 * len(pids):
            return round(after - before, 3)
        before = after
    return round(after - before, 3)


def stage_costs(messages: int) -> dict[str, Any]:
    """Statements, commits, CPU and wall per message of each stage, in this process; time inside the storing
    transaction (rows locked) per message."""
    with database() as url, tempfile.TemporaryDirectory() as name:
        runtime = build_runtime(load_config(config_for(Path(name), url)))
        prefill(runtime, messages, max(1, messages // 5), run_id=4)
        counts = {"statements": 0, "commits": 0}
        texts: set[str] = set()

        def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
            counts["statements"] += 1
            texts.add(sql)

        def commit(*_: Any) -> None:
            counts["commits"] += 1

        event.listen(runtime.engine, "before_cursor_execute", statement)
        event.listen(runtime.engine, "commit", commit)
        out: dict[str, Any] = {}
        held = [0.0]
        original = MessageStore.store_batch  # one transaction per batch: its rows are locked throughout

        def timed(self: MessageStore, *args: Any, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                held[0] += time.perf_counter() - begun

        MessageStore.store_batch = timed  # type: ignore[method-assign]
        try:
            for stage, worker in (("pipeline", PipelineWorker(runtime, "bench-p")),
                                  ("delivery", DeliveryWorker(runtime, "bench-d"))):
                counts.update(statements=0, commits=0)
                texts.clear()
                server = backend_cpu(url)
                cpu, wall = time.process_time(), time.perf_counter()
                drain(worker)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                server_cpu = sum(backend_cpu(url, server).values())
                out[stage] = {"statements_per_msg": round(counts["statements"] / messages, 2),
                              "distinct_statements": len(texts),
                              "commits_per_msg": round(counts["commits"] / messages, 3),
                              "cpu_ms_per_msg": round(cpu / messages * 1000, 2),
                              "wall_ms_per_msg": round(wall / messages * 1000, 2),
                              "server_cpu_ms_per_msg": round(server_cpu / messages * 1000, 2),
                              "server_cpu_ms_per_statement": round(server_cpu / max(1, counts["statements"]) * 1000,
                                                                   3)}
        finally:
            MessageStore.store_batch = original  # type: ignore[method-assign]
            runtime.close()
        out["pipeline"]["store_ms_per_msg"] = round(held[0] / messages * 1000, 2)
        plain = make_url(url).set(drivername="postgresql", query={})  # libpq refuses psycopg's own settings
        with psycopg.connect(plain.render_as_string(hide_password=False)) as conn:
            begun = time.perf_counter()
            for _ in range(1000):
                conn.execute("SELECT 1").fetchone()
            out["round_trip_ms"] = round((time.perf_counter() - begun), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--senders", type=int, help="distinct senders (default: messages / 5)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    result = {"stages": stage_costs(args.messages // 2),
              "runs": [processes(count, args.messages, args.senders or max(1, args.messages // 5), args.timeout)
                       for count in (1, 2, 1, 2)]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
