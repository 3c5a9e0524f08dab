"""The worker's stages in one process or in two: which threads and jobs each process runs, how an idle loop waits,
and the pipeline waking this process's delivery threads when it stores rows (no poll interval in between)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.config import load_config
from gateway.runtime import Runtime, build_runtime
from gateway.server import worker_command, worker_stages
from gateway.worker import BUSY_POLL_SECONDS, BUSY_WINDOW_SECONDS, WorkerProcess, run_loop
from tests.conftest import BASE_CONFIG
from tests.helpers import wait_for
from tests.test_pipeline import sms, store


class ScriptedStage:
    """A stage whose claims find the given numbers of rows, one per round; it stops the loop after the last."""

    def __init__(self, found: list[int], stop: threading.Event) -> None:
        self.found, self.stop = list(found), stop

    def claim(self) -> list[int]:
        if not self.found:
            self.stop.set()
            return []
        rows = self.found.pop(0)
        return [rows] if rows else []

    def process(self, unit: int) -> int:
        return unit

    def release(self, units: list[int]) -> None:
        pass


class RecordingWait(threading.Event):
    """An event whose waits return at once, recording how long each would have waited; the clock moves by it."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.timeouts: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.timeouts.append(timeout)
        self.clock[0] += timeout
        return False


def test_an_idle_loop_looks_again_soon_while_work_came_recently_then_at_the_idle_interval() -> None:
    stop, clock = threading.Event(), [100.0]
    wake, worked = RecordingWait(clock), threading.Event()
    idle_rounds = int(BUSY_WINDOW_SECONDS / BUSY_POLL_SECONDS) + 5
    stage = ScriptedStage([0, 3, *[0] * idle_rounds], stop)
    run_loop(stage, stop, 0.5, wake=wake, worked=worked, clock=lambda: clock[0])
    assert wake.timeouts[0] == 0.5, "nothing found yet: the idle interval"
    assert worked.is_set(), "a round that processed rows tells the next stage"
    busy = wake.timeouts[1:]
    assert set(busy[:int(BUSY_WINDOW_SECONDS / BUSY_POLL_SECONDS) - 1]) == {BUSY_POLL_SECONDS}
    assert busy[-1] == 0.5, "the window over, back to the idle interval"


def test_stage_processes_split_the_threads_and_keep_the_scheduled_jobs_in_one(runtime: Runtime) -> None:
    pipeline, delivery, both = (WorkerProcess(runtime, stage=stage) for stage in ("pipeline", "delivery", None))
    assert [name for name, _ in pipeline._stages()] == ["pipeline0"]
    assert [name for name, _ in delivery._stages()] == ["delivery0", "delivery1", "send0", "notes0"]
    assert [name for name, _ in both._stages()] == ["pipeline0", "delivery0", "delivery1", "send0", "notes0"]
    assert pipeline.jobs == []  # polls, retention and automations run once, beside the delivery stage
    assert len(delivery.jobs) == len(both.jobs) >= 1
    with pytest.raises(ValueError, match="unknown stage"):
        WorkerProcess(runtime, stage="sending")


def test_gateway_run_starts_one_worker_per_stage_by_default(write_config: Callable[..., Path]) -> None:
    path = write_config()
    assert worker_stages(load_config(path)) == ["pipeline", "delivery"]
    one = write_config(BASE_CONFIG.replace("idle_poll_seconds: 0.05", "idle_poll_seconds: 0.05, processes: one"),
                       name="one.yaml")
    assert worker_stages(load_config(one)) == [None]
    assert worker_command(["gw"], path, "delivery") == ["gw", "work", "-c", str(path), "--stage", "delivery"]
    assert worker_command(["gw"], path, None) == ["gw", "work", "-c", str(path)]


def test_the_pipeline_wakes_the_delivery_threads_of_its_process(write_config: Callable[..., Path],
                                                                tmp_path: Path) -> None:
    # a minute between idle polls: the message reaches the CRM in time only if the pipeline's commit wakes delivery,
    # and the process stops in time only if stop() wakes the waiting loops
    path = write_config(BASE_CONFIG.replace("idle_poll_seconds: 0.05", "idle_poll_seconds: 60"))
    rt = build_runtime(load_config(path), http=requests.Session())
    process = WorkerProcess(rt, stage=None)
    try:
        store(rt, sms("SM" + "1" * 32, "+14155550100", "hello"))
        process.start()
        lines = wait_for(lambda: (tmp_path / "out" / "crm.jsonl").read_text().splitlines(), 20,
                         "the message in the CRM")
        assert [json.loads(line)["message"]["text"] for line in lines] == ["hello"]
        joined: list[Any] = []
        stopper = threading.Thread(target=lambda: (process.stop(), process.wait(), joined.append(True)))
        stopper.start()
        stopper.join(20)
        assert joined, "the loops waiting a minute for work should stop at once"
    finally:
        process.stop()
        rt.close()
