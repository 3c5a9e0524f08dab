"""CPU and statements per message of the pipeline and delivery stages, drained in this process on SQLite.

A fresh database in a temp folder; each round prefills N signed Twilio SMS (N/5 senders), drains the pipeline, then
the delivery stage, reading ``time.process_time`` and counting statements with a ``before_cursor_execute``
listener (an executemany counts once). Prints one line per round and the medians.

    .venv/bin/python -m bench.stage_cpu --messages 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.pipeline import drain, prefill, write_config
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.runtime import build_runtime


def measure(messages: int, rounds: int) -> list[dict[str, float]]:
    runtime = build_runtime(load_config(write_config(Path(tempfile.mkdtemp(prefix="gw-bench-cpu-")), "full")))
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    event.listen(runtime.engine, "before_cursor_execute", count)
    stages = {"pipeline": PipelineWorker(runtime, "bench-p"), "delivery": DeliveryWorker(runtime, "bench-d")}
    results = []
    try:
        for index in range(rounds):
            prefill(runtime, messages, max(1, messages // 5), run_id=index + 1)
            row: dict[str, float] = {}
            for name, stage in stages.items():
                statements[0] = 0
                cpu, wall = time.process_time(), time.perf_counter()
                drain(stage)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                row |= {f"{name}_cpu_ms": round(cpu * 1000 / messages, 2), f"{name}_mps": round(messages / wall),
                        f"{name}_statements": round(statements[0] / messages, 2)}
            print(f"round {index + 1}: {row}", flush=True)
            results.append(row)
    finally:
        runtime.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = measure(args.messages, args.rounds)
    print("medians:", {key: statistics.median(row[key] for row in results) for key in results[0]})


if __name__ == "__main__":
    main()
