"""Processes: ``serve`` (gunicorn, a production WSGI server), ``work``, and ``run`` (``serve`` and the workers,
supervised: a dead child is started again after a back-off while the others keep running)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornBaseLogger

from gateway.config import GatewayConfig, channel_class
from gateway.http_worker import worker_class
from gateway.logs import setup_logging_for
from gateway.plugins import Registry, largest_body

log = logging.getLogger(__name__)
DRAIN_SECONDS = 600  # how long SIGTERM waits for in-flight work (a CRM batch job) before killing, all children in all
KILL_WAIT_SECONDS = 5.0  # how long a killed child is waited for (to reap it) before giving up on it
RESTART_INITIAL_SECONDS = 1.0  # a dead child is started again after this, doubling while it keeps dying,
RESTART_MAX_SECONDS = 60.0  # up to this,
RESTART_STABLE_SECONDS = 60.0  # and back to the first delay once it has run this long


class GatewayServer(BaseApplication):  # type: ignore[misc]
    """gunicorn embedded: the app is built in each web process after fork."""

    def __init__(self, config: GatewayConfig, log_format: str) -> None:
        self.gateway_config = config
        self.log_format = log_format
        super().__init__()

    def load_config(self) -> None:
        server = self.gateway_config.settings.server
        registry = Registry.from_entry_points()
        options: dict[str, Any] = {
            "bind": server.listen,
            "workers": server.processes,
            "threads": server.threads,
            "worker_class": worker_class(server.read_timeout_seconds, largest_body(
                channel_class(registry, channel) for channel in self.gateway_config.channels.values())),
            "graceful_timeout": 30,
            "timeout": 60,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "logger_class": GunicornLogger,
            "loglevel": "warning",
            "proc_name": "gateway-serve",
            "post_fork": _post_fork,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        """gunicorn's ``run``, its last words logged rather than printed (JSON lines when the logs are)."""
        try:
            Arbiter(self).run()
        except RuntimeError as exc:
            log.critical("web server: %s", exc)
            sys.exit(1)

    def load(self) -> Any:
        from gateway.runtime import build_runtime
        from gateway.web import create_app

        setup_logging_for(self.gateway_config, self.log_format)
        runtime = build_runtime(self.gateway_config, migrate_schema=False)
        app = create_app(runtime)
        gc.freeze()  # the app's long-lived objects leave the collector's generations: shorter pauses per request
        return app


class GunicornLogger(GunicornBaseLogger):  # type: ignore[misc]
    """gunicorn's own messages (bind errors, worker timeouts) through the gateway's handler: text or JSON, masked,
    like every other line, instead of gunicorn's plain format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
            logger.propagate = True


def _post_fork(server: Any, worker: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ensure_multiprocess_metrics_dir() -> None:
    """Metrics from several processes are summed through files in PROMETHEUS_MULTIPROC_DIR."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def serve(config: GatewayConfig, log_format: str) -> None:
    GatewayServer(config, log_format).run()


class RestartBackoff:
    """How long to wait before starting a dead child again: doubling while it keeps dying soon after its start,
    never more than ``maximum``, back to ``initial`` after a run of ``stable`` seconds."""

    def __init__(self, initial: float = RESTART_INITIAL_SECONDS, maximum: float = RESTART_MAX_SECONDS,
                 stable: float = RESTART_STABLE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.initial, self.maximum, self.stable, self.clock = initial, maximum, stable, clock
        self.failures = 0
        self.since = clock()

    def started(self) -> None:
        self.since = self.clock()

    def died(self) -> float:
        """The child died: seconds to wait before starting it again."""
        if self.clock() - self.since >= self.stable:
            self.failures = 0
        delay = min(self.initial * 2 ** self.failures, self.maximum)
        self.failures += 1
        return delay


@dataclass
class Child:
    """A child process of ``gateway run``, started again after a back-off whenever it dies."""

    name: str
    args: list[str]
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args)
        self.backoff.started()

    def check(self, now: float) -> None:
        """Notice a death (and schedule the restart), or start the child again when its back-off is over."""
        if self.proc is None:
            if now >= self.restart_at:
                log.warning("starting %s again", self.name)
                self.start()
            return
        code = self.proc.poll()
        if code is None:
            return
        delay = self.backoff.died()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log.error("%s exited (%s); starting it again in %.0f s, the others keep running", self.name, how, delay)
        self.proc = None
        self.restart_at = now + delay


def worker_stages(config: GatewayConfig) -> list[str | None]:
    """The stage of each worker process ``gateway run`` starts (None: every stage in one process)."""
    return [None] if config.settings.workers.processes == "one" else ["pipeline", "delivery"]


def worker_command(base: list[str], config_path: Path, stage: str | None) -> list[str]:
    return [*base, "work", "-c", str(config_path), *(["--stage", stage] if stage else [])]


def run_all(config_path: Path, log_format: str, stages: list[str | None] | None = None) -> int:
    """Start ``serve`` and the worker processes (one per stage in ``stages``; by default one for every stage) as
    child processes and keep them running: a child that dies is started again after a back-off (the others go on:
    webhooks are still taken while a worker is down). SIGHUP is passed to the workers (they reload the mappings).
    SIGTERM (or SIGINT) stops them all gracefully, within ``DRAIN_SECONDS`` in all (``stop_children``)."""
    ensure_multiprocess_metrics_dir()
    base = [sys.executable, "-m", "gateway", "--log-format", log_format]
    children = [Child("serve", [*base, "serve", "-c", str(config_path)])]
    children += [Child(f"work {stage}" if stage else "work", worker_command(base, config_path, stage))
                 for stage in stages or [None]]
    for child in children:
        child.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    workers = children[1:]

    def reload(*_: Any) -> None:
        for worker in workers:
            if worker.proc is not None:
                worker.proc.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload)
    while not stopping.wait(0.2):
        for child in children:
            child.check(time.monotonic())
    stop_children({child.name: child.proc for child in children if child.proc is not None})
    return 0


class ChildProcess(Protocol):
    """What stopping needs of a child process (``subprocess.Popen``)."""

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


def stop_children(procs: Mapping[str, ChildProcess], drain_seconds: float = DRAIN_SECONDS,
                  clock: Callable[[], float] = time.monotonic) -> list[str]:
    """SIGTERM to every child at once, then one deadline, ``drain_seconds`` from now, for all of them together to
    finish their in-flight work; the ones still running then are killed. Returns the names of the killed ones."""
    running = {name: proc for name, proc in procs.items() if proc.poll() is None}
    for proc in running.values():
        proc.send_signal(signal.SIGTERM)
    deadline = clock() + drain_seconds
    if running:
        log.info("stopping %s: waiting up to %.0f s in all for their in-flight work", ", ".join(running),
                 drain_seconds)
    for proc in running.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - clock()))
    late = [name for name, proc in running.items() if proc.poll() is None]
    if not late:
        return []
    log.error("%s still running %.0f s after SIGTERM: killed (SIGKILL), their in-flight work is cut off; the rows "
              "they held are taken over when the gateway starts again", ", ".join(late), drain_seconds)
    for name in late:
        running[name].kill()
    for name in late:
        with contextlib.suppress(subprocess.TimeoutExpired):
            running[name].wait(timeout=KILL_WAIT_SECONDS)
    return late
