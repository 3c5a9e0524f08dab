"""Ingest cost per request without a server: each WSGI app called directly, in one process, side by side.

No gunicorn, no sockets, no load generator: what is left is the app's own work (routing, signature check,
parsing, the SQLite insert and its commit), so the gateway and the bare baseline compare like for like.

    .venv/bin/python -m bench.inprocess                      # 3,000 signed requests per app
    .venv/bin/python -m bench.inprocess --profile tottime    # cProfile of the gateway's requests
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.bare import create_bare_app, create_schema, database_path
from bench.ingest import Settings, write_config
from bench.loadgen import signed_requests
from gateway.config import load_config

PORT = 8080
PUBLIC_URL = f"http://127.0.0.1:{PORT}"
WARM_UP = 200
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(raw: bytes) -> dict[str, Any]:
    """The WSGI environ of one raw HTTP/1.1 request, as a server would build it."""
    head, body = raw.split(b"\r\n\r\n", 1)
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, protocol = request_line.split(" ")
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(PORT), "SERVER_PROTOCOL": protocol, "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for line in header_lines:
        name, _, value = line.partition(": ")
        key = name.upper().replace("-", "_")
        env[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    return env


def build(which: str, folder: Path) -> WsgiApp:
    config = load_config(str(write_config(folder / which, PORT, Settings())))
    if which == "gateway":
        from gateway.runtime import build_runtime
        from gateway.web import create_app

        return create_app(build_runtime(config))
    create_schema(database_path(config))
    return create_bare_app(database_path(config), "full", PUBLIC_URL)


def call(app: WsgiApp, env: dict[str, Any]) -> None:
    statuses: list[str] = []
    b"".join(app(env, lambda status, headers: statuses.append(status)))
    if not statuses[0].startswith("200"):
        raise RuntimeError(f"request answered {statuses[0]}")


def measure(which: str, requests: int, run_id: int, profile: str | None = None) -> dict[str, float]:
    """Wall and CPU milliseconds per request for one app, after a warm-up."""
    app = build(which, Path(tempfile.mkdtemp(prefix=f"gw-bench-inprocess-{which}-")))
    envs = [environ(raw) for raw in signed_requests("127.0.0.1", PORT, PUBLIC_URL, run_id, requests + WARM_UP)]
    for env in envs[:WARM_UP]:
        call(app, env)
    profiler = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for env in envs[WARM_UP:]:
        call(app, env)
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats(profile).print_stats(30)
    return {"wall_ms": round(wall / requests * 1000, 3), "cpu_ms": round(cpu / requests * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", choices=["tottime", "cumtime"], help="profile the gateway's requests")
    args = parser.parse_args()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="gw-bench-metrics-"))
    if args.profile:
        print(measure("gateway", args.requests, 1, args.profile))
        return
    print("| app | wall ms / request | CPU ms / request |\n|---|---:|---:|")
    for run_id, which in enumerate(("gateway", "bare"), start=1):
        figures = measure(which, args.requests, run_id)
        print(f"| {which} | {figures['wall_ms']} | {figures['cpu_ms']} |")


if __name__ == "__main__":
    main()
