"""Processes: ``serve`` (gunicorn, a production WSGI server), ``work``, and ``run`` (both, supervised)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from gateway.config import GatewayConfig
from gateway.http_worker import worker_class
from gateway.logs import setup_logging

log = logging.getLogger(__name__)
DRAIN_SECONDS = 600  # how long SIGTERM waits for in-flight work (a CRM batch job) before killing


class GatewayServer(BaseApplication):  # type: ignore[misc]
    """gunicorn embedded: the app is built in each web process after fork."""

    def __init__(self, config: GatewayConfig, log_format: str) -> None:
        self.gateway_config = config
        self.log_format = log_format
        super().__init__()

    def load_config(self) -> None:
        server = self.gateway_config.settings.server
        options: dict[str, Any] = {
            "bind": server.listen,
            "workers": server.processes,
            "threads": server.threads,
            "worker_class": worker_class(server.read_timeout_seconds, server.max_body_bytes),
            "graceful_timeout": 30,
            "timeout": 60,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "gateway-serve",
            "post_fork": _post_fork,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from gateway.runtime import build_runtime
        from gateway.web import create_app

        setup_logging(self.gateway_config.settings.logging.level, self.log_format)
        runtime = build_runtime(self.gateway_config, migrate_schema=False)
        app = create_app(runtime)
        gc.freeze()  # the app's long-lived objects leave the collector's generations: shorter pauses per request
        return app


def _post_fork(server: Any, worker: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ensure_multiprocess_metrics_dir() -> None:
    """Metrics from several processes are summed through files in PROMETHEUS_MULTIPROC_DIR."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def serve(config: GatewayConfig, log_format: str) -> None:
    GatewayServer(config, log_format).run()


def run_all(config_path: Path, log_format: str) -> int:
    """Start ``serve`` and ``work`` as child processes; SIGTERM stops both gracefully; a child's death stops all."""
    ensure_multiprocess_metrics_dir()
    base = [sys.executable, "-m", "gateway", "--log-format", log_format]
    children = {
        "serve": subprocess.Popen([*base, "serve", "-c", str(config_path)]),
        "work": subprocess.Popen([*base, "work", "-c", str(config_path)]),
    }
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                log.error("%s exited with %s; stopping the gateway", name, child.returncode)
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(timeout=DRAIN_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
    return exit_code
