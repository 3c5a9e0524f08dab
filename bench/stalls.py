"""Machine-stall probe: what the machine allowed while a latency round ran.

A process that asks to sleep 1 ms at a time and records how late each wake-up is. It uses almost no CPU, so it
hardly competes with the servers; a wake-up 30 ms late means nothing on this machine, the servers and the load
generator included, was sure to run during those 30 ms (another tenant, the hypervisor, a disk flush). The
benchmarks run one beside every latency round, so a round's p99 can be read against the worst stall in it.

    .venv/bin/python -m bench.stalls     # measures until its standard input closes (Ctrl-D), then prints JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TICK_S = 0.001
STALL_MS = 5.0  # a wake-up later than this counts as a stall
READY = "measuring"  # the probe's first line: it is running from here on


def measure(stop: threading.Event, since: float) -> dict[str, float]:
    """Sleep TICK_S at a time until ``stop``; lateness is each wake-up's distance from the one before, less a tick,
    counted from ``since`` so that a stall before the first sleep is seen too."""
    late_ms: list[float] = []
    previous = since
    while not stop.is_set():
        time.sleep(TICK_S)
        now = time.perf_counter()
        late_ms.append((now - previous - TICK_S) * 1000)
        previous = now
    late_ms.sort()
    if not late_ms:
        return {"wakeups": 0, "late_p99_ms": 0.0, "stall_max_ms": 0.0, "stalled_ms": 0.0, "stalls": 0}
    stalls = [late for late in late_ms if late > STALL_MS]
    return {
        "wakeups": len(late_ms),
        "late_p99_ms": round(late_ms[int(0.99 * (len(late_ms) - 1))], 2),
        "stall_max_ms": round(late_ms[-1], 2),
        "stalled_ms": round(sum(stalls), 2),
        "stalls": len(stalls),
    }


@contextmanager
def probing() -> Iterator[dict[str, Any]]:
    """Run the probe for the duration of the ``with`` block; the yielded dict holds its figures afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "bench.stalls"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    figures: dict[str, Any] = {}
    assert process.stdout is not None
    process.stdout.readline()  # READY
    try:
        yield figures
    finally:
        out, _ = process.communicate(input="", timeout=30)  # closing stdin ends the probe
        figures.update(json.loads(out))


def main() -> None:
    stop = threading.Event()

    def wait_for_stdin_to_close() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin_to_close, daemon=True).start()
    since = time.perf_counter()
    print(READY, flush=True)
    json.dump(measure(stop, since), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
