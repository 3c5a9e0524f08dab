"""The machine-stall probe the benchmarks run beside each latency round reports a stall it was made to suffer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from bench.stalls import READY
from tests.helpers import ROOT

STOPPED_SECONDS = 0.2


def test_probe_reports_the_time_it_was_held_up() -> None:
    probe = subprocess.Popen([sys.executable, "-m", "bench.stalls"], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout is not None
        assert probe.stdout.readline().strip() == READY
        os.kill(probe.pid, signal.SIGSTOP)
        time.sleep(STOPPED_SECONDS)  # the stall itself
        os.kill(probe.pid, signal.SIGCONT)
        out, _ = probe.communicate(input="", timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
    figures = json.loads(out)
    assert figures["stall_max_ms"] >= STOPPED_SECONDS * 1000 * 0.8
    assert figures["stalls"] >= 1
    assert figures["stalled_ms"] >= figures["stall_max_ms"]
    assert figures["wakeups"] >= 1
    assert figures["fsyncs"] >= 1  # the disk side ran too: a stop of 200 ms spans several 50 ms periods
    assert figures["fsync_max_ms"] > 0
