"""Instructions per message of the pipeline stage, counted by valgrind (callgrind) around a warm drain.

CPU time on a shared machine moves by 10-20 % from run to run; the count of instructions does not (two runs of one
commit agree within 0.05 %), so two commits compare exactly, one after the other. Needs Debian's `valgrind`.
Each run takes a fresh SQLite database in a temp folder, drains 200 messages to warm the caches and compile the
statements, then counts the instructions of draining N signed Twilio SMS from N/5 senders:

    .venv/bin/python -m bench.stage_instructions --messages 1000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COLLECTED = re.compile(r"Collected : (\d+)")


def drain_counted(messages: int) -> None:
    """In the process valgrind runs: prefill, warm up, then switch counting on around the drain."""
    from bench.pipeline import drain, prefill, write_config
    from gateway.config import load_config
    from gateway.pipeline import PipelineWorker
    from gateway.runtime import build_runtime

    runtime = build_runtime(load_config(write_config(Path(tempfile.mkdtemp(prefix="gw-bench-ins-")), "full")))
    try:
        worker = PipelineWorker(runtime, "bench-p")
        prefill(runtime, 200, 40, run_id=99)
        drain(worker)
        prefill(runtime, messages, max(1, messages // 5), run_id=1)
        control = ["callgrind_control", "--instr"]
        subprocess.run([*control, "on", str(os.getpid())], check=True, capture_output=True, timeout=60)
        drain(worker)
        subprocess.run([*control, "off", str(os.getpid())], check=True, capture_output=True, timeout=60)
    finally:
        runtime.close()


def count(messages: int) -> float:
    """Millions of instructions per message, from a run under callgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as folder:
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={folder}/out",
             sys.executable, "-m", "bench.stage_instructions", "--inside", "--messages", str(messages)],
            capture_output=True, text=True, timeout=3600, check=False)
    found = COLLECTED.search(run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"the run under valgrind failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return int(found.group(1)) / messages / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        drain_counted(args.messages)
    else:
        print(f"pipeline stage: {count(args.messages):.4f} million instructions per message")


if __name__ == "__main__":
    main()
