"""Machine-stall probe: what the machine allowed while a latency round ran.

Two measurements in one small process:

- the CPU: a thread asks to sleep 1 ms at a time and records how late each wake-up is. A wake-up 30 ms late means
  nothing on this machine, the servers and the load generator included, was sure to run during those 30 ms
  (another tenant, the hypervisor);
- the disk: another thread appends 4 KiB to a file beside the benchmark's databases and fsyncs it every 50 ms, as
  a commit with `synchronous=full` does. A slow fsync holds up every commit on that disk at that moment.

Both use almost nothing of the machine. The benchmarks run one probe beside every latency round, so a round's p99
can be read against the worst stall and the slowest fsync in it.

    .venv/bin/python -m bench.stalls [FOLDER]   # measures until standard input closes (Ctrl-D), prints JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

TICK_S = 0.001
STALL_MS = 5.0  # a wake-up later than this counts as a stall
READY = "measuring"  # the probe's first line, printed once both samplers have taken a sample
FSYNC_EVERY_S = 0.05


def _p99(ordered: list[float]) -> float:
    return round(ordered[int(0.99 * (len(ordered) - 1))], 2)


def measure(stop: threading.Event, started: threading.Event) -> dict[str, float]:
    """Sleep TICK_S at a time until ``stop``; lateness is each wake-up's distance from the one before, less a tick.

    ``started`` is set once the first wake-up is recorded. ``stop`` is looked at before each sleep, so one more
    wake-up is always recorded after it is seen: a stall at any point of the loop lands in a measured interval."""
    late_ms: list[float] = []
    previous = time.perf_counter()
    while True:
        stopping = stop.is_set()
        time.sleep(TICK_S)
        now = time.perf_counter()
        late_ms.append((now - previous - TICK_S) * 1000)
        previous = now
        started.set()
        if stopping:
            break
    late_ms.sort()
    stalls = [late for late in late_ms if late > STALL_MS]
    return {
        "wakeups": len(late_ms),
        "late_p99_ms": _p99(late_ms),
        "stall_max_ms": round(late_ms[-1], 2),
        "stalled_ms": round(sum(stalls), 2),
        "stalls": len(stalls),
    }


def measure_fsync(stop: threading.Event, started: threading.Event, folder: str) -> dict[str, float]:
    """Append 4 KiB and fsync every FSYNC_EVERY_S until ``stop``; the slowest fsync and the 99th percentile.

    ``started`` is set once the first fsync is timed."""
    took_ms: list[float] = []
    handle, path = tempfile.mkstemp(prefix="stall-probe-", dir=folder)
    try:
        while True:
            os.write(handle, b"\0" * 4096)
            began = time.perf_counter()
            os.fsync(handle)
            took_ms.append((time.perf_counter() - began) * 1000)
            started.set()
            if stop.wait(FSYNC_EVERY_S):
                break
    finally:
        os.close(handle)
        os.unlink(path)
    took_ms.sort()  # never empty: the loop fsyncs before it first waits
    return {"fsyncs": len(took_ms), "fsync_p99_ms": _p99(took_ms), "fsync_max_ms": round(took_ms[-1], 2)}


class Sampler(threading.Thread):
    """Runs one measurement in its own thread; ``started`` is set after its first sample (or once it has failed)."""

    def __init__(self, work: Callable[[threading.Event], dict[str, float]]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.started = threading.Event()
        self.figures: dict[str, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.figures = self.work(self.started)
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()


@contextmanager
def probing(folder: str | None = None) -> Iterator[dict[str, Any]]:
    """Run the probe for the duration of the ``with`` block; the yielded dict holds its figures afterwards.

    ``folder`` is where the fsync file goes: beside the databases being measured (default: the temp folder).
    The block starts only once the probe is measuring."""
    process = subprocess.Popen([sys.executable, "-m", "bench.stalls", folder or tempfile.gettempdir()],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    figures: dict[str, Any] = {}
    assert process.stdout is not None
    if process.stdout.readline().strip() != READY:
        process.kill()
        process.communicate()
        raise RuntimeError(f"the stall probe did not start (exit status {process.returncode}; see its stderr)")
    try:
        yield figures
    finally:
        out, _ = process.communicate(input="", timeout=30)  # closing stdin ends the probe
        figures.update(json.loads(out))


def main() -> None:
    """Print READY once both samplers have their first sample, measure until standard input closes, print JSON."""
    stop = threading.Event()
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    samplers = [Sampler(lambda started: measure(stop, started)),
                Sampler(lambda started: measure_fsync(stop, started, folder))]
    for sampler in samplers:
        sampler.start()
    for sampler in samplers:
        sampler.started.wait()
    try:
        if not any(sampler.error for sampler in samplers):
            print(READY, flush=True)
            sys.stdin.read()
    finally:
        stop.set()
        for sampler in samplers:
            sampler.join()
    for sampler in samplers:
        if sampler.error is not None:
            raise sampler.error
    json.dump(samplers[0].figures | samplers[1].figures, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
