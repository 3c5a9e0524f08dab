"""Ingest benchmark: the real gateway web server against a bare Flask endpoint, side by side in one run.

Both servers run at once on 127.0.0.1, each from a config in a temp folder that differs only in port and database
file, so both get the same gunicorn settings. Rounds alternate between them (A B, B A, ...) and the figures are
medians, so a noisy neighbour hurts both alike. Afterwards every 2xx answer must be a row in the inbox.

    .venv/bin/python -m bench.ingest --rounds 5
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from bench.loadgen import ACCOUNT_SID, AUTH_TOKEN, CHANNEL
from bench.stalls import probing
from gateway.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
_run_ids = count(1)


@dataclass(frozen=True)
class Settings:
    """One row of the benchmark: server and storage settings shared by both servers."""

    processes: int = ServerConfig.model_fields["processes"].default
    threads: int = ServerConfig.model_fields["threads"].default
    synchronous: str = "full"
    concurrency: int = 16
    rounds: int = 5
    round_seconds: float = 3.0
    rate: float = 500.0
    latency_seconds: float = 10.0
    latency_rounds: int = 5

    @property
    def label(self) -> str:
        return f"{self.processes} proc x {self.threads} thr, synchronous={self.synchronous}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, port: int, settings: Settings) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(f"""
storage: {{url: "sqlite:///{folder / 'gateway.db'}", sqlite_synchronous: {settings.synchronous}}}
server: {{listen: "127.0.0.1:{port}", public_url: "http://127.0.0.1:{port}",
          processes: {settings.processes}, threads: {settings.threads}}}
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


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    database: Path
    process: subprocess.Popen[bytes] | None = None
    ok_total: int = 0
    closed: list[dict[str, Any]] = field(default_factory=list)
    open: list[dict[str, Any]] = field(default_factory=list)

    def start(self, log: Path) -> None:
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within 60 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def load(self, mode: str, settings: Settings, seconds: float | None = None) -> dict[str, Any]:
        duration = seconds if seconds is not None else (
            settings.round_seconds if mode == "closed" else settings.latency_seconds)
        command = [sys.executable, "-m", "bench.loadgen", "--port", str(self.port),
                   "--public-url", f"http://127.0.0.1:{self.port}", "--mode", mode,
                   "--run-id", str(next(_run_ids)), "--duration", str(duration),
                   "--concurrency", str(settings.concurrency), "--rate", str(settings.rate)]
        with probing(str(self.database.parent)) as machine:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=duration + 90,
                                  check=True)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["machine"] = machine
        self.ok_total += result["ok"]
        return result

    def inbox_rows(self) -> int:
        with sqlite3.connect(self.database) as conn:
            return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])


def run(settings: Settings, workdir: Path | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run one settings row; return medians, ratios and the loss check."""
    base = Path(workdir or tempfile.mkdtemp(prefix="gw-bench-ingest-"))
    gw_port, bare_port = free_port(), free_port()
    gw_config = write_config(base / "gateway", gw_port, settings)
    bare_config = write_config(base / "bare", bare_port, settings)
    python = sys.executable
    servers = [
        Server("gateway", [python, "-m", "gateway", "serve", "-c", str(gw_config)], gw_port,
               base / "gateway" / "gateway.db"),
        Server("bare", [python, "-m", "bench.bare", "-c", str(bare_config)], bare_port,
               base / "bare" / "gateway.db"),
    ]

    def say(text: str) -> None:
        if verbose:
            print(text, file=sys.stderr, flush=True)

    try:
        for server in servers:
            server.start(base / f"{server.name}.log")
        for server in servers:  # warm up: imports, connections, page cache
            server.load("closed", settings, seconds=1.0)
        for index in range(settings.rounds):
            for server in servers if index % 2 == 0 else servers[::-1]:
                result = server.load("closed", settings)
                server.closed.append(result)
                say(f"  throughput round {index + 1} {server.name}: {result['rps']:.0f} req/s "
                    f"(p99 {result['p99_ms']} ms, non-2xx {result['non_2xx']}, errors {result['errors']})")
        for index in range(settings.latency_rounds):
            for server in servers if index % 2 == 0 else servers[::-1]:
                result = server.load("open", settings)
                server.open.append(result)
                say(f"  latency round {index + 1} {server.name} @ {settings.rate:.0f}/s: p50 {result['p50_ms']} ms, "
                    f"p99 {result['p99_ms']} ms (ok {result['ok']}, non-2xx {result['non_2xx']}, "
                    f"errors {result['errors']}; worst machine stall {result['machine']['stall_max_ms']} ms, "
                    f"slowest fsync {result['machine']['fsync_max_ms']} ms)")
    finally:
        for server in servers:
            server.stop()

    out: dict[str, Any] = {"settings": settings.__dict__ | {"label": settings.label}, "workdir": str(base)}
    for server in servers:
        rows = server.inbox_rows()
        out[server.name] = {
            "rps_median": statistics.median(r["rps"] for r in server.closed),
            "rps_rounds": [r["rps"] for r in server.closed],
            "closed_p99_ms_median": statistics.median(r["p99_ms"] for r in server.closed),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in server.open),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in server.open),
            "p99_ms_rounds": [r["p99_ms"] for r in server.open],
            "stall_max_ms_rounds": [r["machine"]["stall_max_ms"] for r in server.open],
            "fsync_max_ms_rounds": [r["machine"]["fsync_max_ms"] for r in server.open],
            "open_ok": sum(r["ok"] for r in server.open),
            "open_sent": sum(r["ok"] + r["non_2xx"] + r["errors"] for r in server.open),
            "failures": sum(r["non_2xx"] + r["errors"] for r in server.closed + server.open),
            "ok_total": server.ok_total,
            "inbox_rows": rows,
            "no_loss": rows == server.ok_total,
        }
    out["ratio_rps"] = round(out["gateway"]["rps_median"] / out["bare"]["rps_median"], 3)
    ratios = [g["rps"] / b["rps"] for g, b in zip(servers[0].closed, servers[1].closed, strict=True)]
    out["ratio_rps_per_round"] = [round(r, 3) for r in ratios]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=Settings.processes)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-rounds", type=int, default=Settings.latency_rounds)
    args = parser.parse_args()
    settings = Settings(args.processes, args.threads, args.synchronous, args.concurrency, args.rounds,
                        args.round_seconds, args.rate, args.latency_seconds, args.latency_rounds)
    print(json.dumps(run(settings), indent=2))


if __name__ == "__main__":
    main()
