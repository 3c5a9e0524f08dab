"""The machine-stall probe the benchmarks run beside each latency round reports a stall it was made to suffer.

The probe says READY only once both of its samplers have taken a sample, and it records one more wake-up after it
is told to stop; so however late the machine lets it run, a stop between READY and the end lies inside a measured
interval. Nothing here waits for the probe by sleeping: READY, ``waitpid`` and the end of standard input are the
handshakes, and the one sleep is the stall itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.stalls import READY, probing
from tests.helpers import ROOT

STOPPED_SECONDS = 0.2


def test_probe_reports_the_time_it_was_held_up(tmp_path: Path) -> None:
    probe = subprocess.Popen([sys.executable, "-m", "bench.stalls", str(tmp_path)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout is not None
        assert probe.stdout.readline().strip() == READY
        os.kill(probe.pid, signal.SIGSTOP)
        # SIGSTOP takes effect once a thread of the probe gets the CPU to act on it: wait until every thread stopped
        _, status = os.waitpid(probe.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        time.sleep(STOPPED_SECONDS)  # the stall itself
        os.kill(probe.pid, signal.SIGCONT)
        out, _ = probe.communicate(input="", timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
    figures = json.loads(out)
    # the sampler's last wake-up before the stop and its first after SIGCONT are at least the stop apart
    assert figures["stall_max_ms"] >= STOPPED_SECONDS * 1000 - 1
    assert figures["stalls"] >= 1
    assert figures["stalled_ms"] >= figures["stall_max_ms"]
    assert figures["wakeups"] >= 2
    assert figures["fsyncs"] >= 1
    assert 0 <= figures["fsync_p99_ms"] <= figures["fsync_max_ms"]  # a tmpfs fsync may round to 0.0 ms


def test_probe_that_cannot_measure_never_says_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """A folder the fsync sampler cannot write in: the probe exits without READY and ``probing`` says so."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(RuntimeError, match="did not start"), probing(str(tmp_path / "missing")):
        pass
    assert "FileNotFoundError" in capfd.readouterr().err
