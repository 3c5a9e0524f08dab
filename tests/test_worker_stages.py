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
from gateway.ingest import InboxBatcher
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime, build_runtime
from gateway.server import worker_command, worker_stages
from gateway.storage.tables import outbox
from gateway.wakeup import INBOX, OUTBOX, Wakeup
from gateway.web import create_app
from gateway.worker import WorkerProcess, drain_once, run_loop
from tests.conftest import BASE_CONFIG
from tests.helpers import wait_for
from tests.reply_flow import only_conversation, post_agent_reply
from tests.scripted_channel import ScriptedChannel, ScriptedProvider, registry_with_scripted
from tests.test_pipeline import count, sms, store
from tests.test_two_way import CONFIG as TWO_WAY_CONFIG
from tests.test_two_way import CUSTOMER


class ScriptedStage:
    """A stage whose claims find the given numbers of rows, one per round; after the last it stops the loop (as
    ``WorkerProcess.stop`` does: ``stop``, then the wake-up)."""

    def __init__(self, found: list[int], stop: threading.Event, wake: threading.Event) -> None:
        self.found, self.stop, self.wake = list(found), stop, wake

    def claim(self) -> list[int]:
        if not self.found:
            self.stop.set()
            self.wake.set()
            return []
        rows = self.found.pop(0)
        return [rows] if rows else []

    def process(self, unit: int) -> int:
        return unit

    def release(self, units: list[int]) -> None:
        pass


def test_a_round_that_processed_rows_wakes_the_next_stage_and_an_idle_one_waits_for_its_wake() -> None:
    stop, wake, woken = threading.Event(), threading.Event(), []
    stage = ScriptedStage([3, 0, 2], stop, wake)
    wake.set()  # a wake-up already waiting: the idle round after the first does not wait out its minute
    run_loop(stage, stop, 60.0, wake=wake, on_work=lambda: woken.append(True))
    assert woken == [True, True]


def test_a_wakeup_without_a_reader_is_dropped_and_one_with_a_reader_sets_its_events(tmp_path: Path) -> None:
    writer = Wakeup(tmp_path / "locks", INBOX)
    writer.notify()  # no pipe yet: nothing happens, nothing raised
    stop, first, second = threading.Event(), threading.Event(), threading.Event()
    reader = Wakeup(tmp_path / "locks", INBOX).listen([first, second], stop)
    assert reader is not None
    try:
        writer.notify()
        assert first.wait(20) and second.wait(20)
    finally:
        stop.set()
        reader.join(20)
        writer.close()
    assert not reader.is_alive()


def test_a_file_or_a_link_where_the_pipe_should_be_is_never_written(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    target = tmp_path / "gateway.db"
    target.write_bytes(b"SQLite format 3\x00")
    (locks / "wake-inbox.fifo").symlink_to(target)
    (locks / "wake-outbox.fifo").write_bytes(b"")
    for queue in (INBOX, OUTBOX):
        writer = Wakeup(locks, queue)
        writer.notify()
        assert Wakeup(locks, queue).listen([threading.Event()], threading.Event()) is None
        writer.close()
    assert target.read_bytes() == b"SQLite format 3\x00" and (locks / "wake-outbox.fifo").read_bytes() == b""


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


def quiet_runtime(write_config: Callable[..., Path]) -> Runtime:
    """A runtime whose idle workers poll once a minute: anything faster is a wake-up's doing."""
    path = write_config(BASE_CONFIG.replace("idle_poll_seconds: 0.05", "idle_poll_seconds: 60"))
    return build_runtime(load_config(path), http=requests.Session())


def test_a_webhook_stored_by_the_web_process_wakes_the_pipeline_process(write_config: Callable[..., Path]) -> None:
    rt = quiet_runtime(write_config)
    process = WorkerProcess(rt, stage="pipeline")
    batcher = InboxBatcher(rt.queues, on_stored=Wakeup(rt.data_dir / "locks", INBOX).notify)
    try:
        process.start()
        item = sms("SM" + "2" * 32, "+14155550100", "hello")
        batcher.store("sms-main", [item], {}, "https://gw.example.com/hooks/sms-main")
        wait_for(lambda: count(rt, outbox) == 1, 20, "the pipeline process to take the row at once")
    finally:
        process.stop()
        process.wait()
        rt.close()


def test_the_pipeline_process_wakes_the_delivery_process(write_config: Callable[..., Path], tmp_path: Path) -> None:
    rt = quiet_runtime(write_config)
    process = WorkerProcess(rt, stage="delivery")
    try:
        process.start()
        store(rt, sms("SM" + "3" * 32, "+14155550100", "hello"))
        drain_once(PipelineWorker(rt, "another-process"))
        Wakeup(rt.data_dir / "locks", OUTBOX).notify()  # as a pipeline process does after its commit
        wait_for(lambda: (tmp_path / "out" / "crm.jsonl").read_text().strip(), 20,
                 "the delivery process to write the message at once")
    finally:
        process.stop()
        process.wait()
        rt.close()


class WaitRecorder(threading.Event):
    """An event that also tells when a thread has started waiting on it (the loop behind it is idle)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_a_reply_queued_by_the_pipeline_process_wakes_the_send_thread_of_the_delivery_process(
        write_config: Callable[..., Path]) -> None:
    ScriptedChannel.provider = provider = ScriptedProvider()
    registry = registry_with_scripted()
    # a minute between idle polls: the reply reaches the provider in time only through the outbox pipe
    path = write_config(TWO_WAY_CONFIG.replace("workers: {", "workers: {idle_poll_seconds: 60, "))
    config = load_config(path, registry)
    pipeline_rt = build_runtime(config, registry, requests.Session())
    delivery_rt = build_runtime(config, registry, requests.Session(), migrate_schema=False)
    delivery_rt.sends_waiting = sends_waiting = WaitRecorder()
    delivery = WorkerProcess(delivery_rt, stage="delivery")
    try:
        store(pipeline_rt, sms("SM" + "4" * 32, CUSTOMER, "Where is my order?"))
        drain_once(PipelineWorker(pipeline_rt, "pipeline-process"))
        delivery.start()
        assert sends_waiting.waiting.wait(20), "the send thread should be idle, waiting for a wake-up"
        post_agent_reply(create_app(pipeline_rt).test_client(), only_conversation(pipeline_rt), "It ships today")
        assert drain_once(PipelineWorker(pipeline_rt, "pipeline-process")) == 1
        WorkerProcess(pipeline_rt, stage="pipeline")._stored()  # what a pipeline process does after its commit
        sent = wait_for(lambda: provider.accepted, 20, "the reply at the provider before the next idle poll")
        assert [(to, text.split(" [")[0]) for _, to, text in sent] == [(CUSTOMER, "It ships today")]
    finally:
        delivery.stop()
        delivery.wait()
        pipeline_rt.close()
        delivery_rt.close()
