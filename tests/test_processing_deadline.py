"""Every inbox row has a processing deadline, lease or no lease.

A row whose normalize never returns was held for good: the lease keeper renewed it for as long as the thread ran,
so it was never dead-lettered, and every restart picked it up again. A row that kills its worker (a crash, a kill)
was claimed again after every restart, for ever, together with whatever shared its batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.config import load_config
from gateway.pipeline import PipelineWorker
from gateway.records import RawRecord
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import dead_letters, inbox, messages
from gateway.worker import EXIT_STUCK, WorkerProcess, drain_once
from tests.conftest import BASE_CONFIG
from tests.helpers import wait_for
from tests.test_pipeline import sms, store

MAX_ATTEMPTS = 3
SIDS = ["SM" + str(n) * 32 for n in range(1, 6)]


class Crash(BaseException):
    """The worker process dying mid-row (SIGKILL, SIGBUS): nothing after it runs, no handler sees it."""


@pytest.fixture
def rt(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    text = BASE_CONFIG.replace("workers: {", "workers: {lease_seconds: 5, max_processing_seconds: 300, ").replace(
        "retry: {", f"retry: {{max_attempts: {MAX_ATTEMPTS}, ")
    runtime = build_runtime(load_config(write_config(text)))
    yield runtime
    runtime.close()


def rows(rt: Runtime) -> dict[str, Any]:
    with rt.engine.connect() as conn:
        return {row.provider_id: row for row in conn.execute(select(inbox))}


def letters(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(dead_letters)))


def stored_messages(rt: Runtime) -> int:
    with rt.engine.connect() as conn:
        return len(conn.execute(select(messages.c.id)).all())


def test_a_row_whose_normalize_never_returns_is_dead_lettered_at_its_deadline(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    store(rt, *(sms(sid, "+14155550100", f"message {n}") for n, sid in enumerate(SIDS[:3])))
    connector = rt.channels["sms-main"]
    normalize = connector.normalize
    entered, release = threading.Event(), threading.Event()

    def stuck_on_the_second(record: RawRecord) -> list[Any]:
        if record.provider_id == SIDS[1]:
            entered.set()
            release.wait(60)  # stands for a loop that never ends
        return normalize(record)

    monkeypatch.setattr(connector, "normalize", stuck_on_the_second)
    now = [1000.0]
    stuck: list[tuple[threading.Thread, str]] = []
    worker = PipelineWorker(rt, "worker-a", on_stuck=lambda thread, what: stuck.append((thread, what)))
    worker.clock = lambda: now[0]
    [batch] = worker.claim()
    running = threading.Thread(target=worker.process, args=(batch,), name="pipeline0")
    running.start()
    try:
        assert entered.wait(30)
        now[0] += 299  # within the deadline: the lease keeper goes on renewing
        held = rows(rt)[SIDS[1]].lease_until
        wait_for(lambda: rows(rt)[SIDS[1]].lease_until > held, 30, "the lease to be renewed")
        assert letters(rt) == []
        now[0] += 2  # 301 s on the second row
        [letter] = wait_for(lambda: letters(rt), 30, "the stuck row to be dead-lettered")
    finally:
        release.set()
        running.join(30)
    assert (letter.stage, letter.error_class, letter.error_code) == ("pipeline", "exhausted", "processing_timeout")
    assert letter.source_id == rows(rt)[SIDS[1]].id
    assert "processing took over 300 s (workers.max_processing_seconds)" in letter.reason
    assert [(thread.name, what) for thread, what in stuck] == [
        ("pipeline0", f"pipeline thread pipeline0 is stuck in inbox row {letter.source_id}")]
    after = rows(rt)
    assert after[SIDS[1]].status == "dead"
    # the batch's other rows were given back, and the thread that came back at last stored nothing
    assert [(after[sid].status, after[sid].lease_owner, after[sid].attempts) for sid in (SIDS[0], SIDS[2])] == [
        ("pending", None, 0), ("pending", None, 0)]
    assert stored_messages(rt) == 0
    monkeypatch.undo()
    drain_once(PipelineWorker(rt, "worker-b"))
    assert {sid: row.status for sid, row in rows(rt).items()} == {SIDS[0]: "done", SIDS[1]: "dead", SIDS[2]: "done"}
    assert len(letters(rt)) == 1


def test_a_row_that_kills_its_worker_every_time_is_dead_lettered_alone(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    store(rt, *(sms(sid, "+14155550100", f"message {n}") for n, sid in enumerate(SIDS)))
    poison = SIDS[2]
    connector = rt.channels["sms-main"]
    normalize = connector.normalize

    def crash_on_poison(record: RawRecord) -> list[Any]:
        if record.provider_id == poison:
            raise Crash(record.provider_id)
        return normalize(record)

    monkeypatch.setattr(connector, "normalize", crash_on_poison)
    crashes = 0
    for _ in range(50):  # each round: a worker starts, claims, and dies or finishes
        worker = PipelineWorker(rt, f"worker-{crashes}")
        if all(row.status != "pending" for row in rows(rt).values()):
            break
        try:
            drain_once(worker)
        except Crash:
            crashes += 1
            with rt.engine.begin() as conn:  # the dead worker's leases run out
                conn.execute(update(inbox).where(inbox.c.lease_owner.is_not(None)).values(lease_until=utcnow()))
    else:
        pytest.fail(f"the inbox never drained: {crashes} crashes")
    [letter] = letters(rt)
    assert (letter.error_class, letter.error_code) == ("exhausted", "processing_abandoned")
    assert letter.source_id == rows(rt)[poison].id
    assert f"claimed {MAX_ATTEMPTS + 1} times and never finished" in letter.reason
    assert {sid: row.status for sid, row in rows(rt).items()} == {
        sid: "dead" if sid == poison else "done" for sid in SIDS}
    assert crashes == MAX_ATTEMPTS


def test_a_stuck_pipeline_thread_stops_the_worker_process_for_a_restart(
        write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The row is settled, but the thread cannot be stopped: the process stops (without waiting for that thread)
    and exits with ``EXIT_STUCK``, for its supervisor to start it again."""
    text = BASE_CONFIG.replace("workers: {", "workers: {lease_seconds: 5, max_processing_seconds: 0.5, ")
    runtime = build_runtime(load_config(write_config(text)))
    store(runtime, sms(SIDS[0], "+14155550100", "never normalised"))
    release = threading.Event()
    monkeypatch.setattr(runtime.channels["sms-main"], "normalize", lambda record: release.wait(60) and [])
    process = WorkerProcess(runtime)
    process.start()
    try:
        assert process.stop_event.wait(30), "the worker process was not stopped"
        waiting = threading.Thread(target=process.wait)
        waiting.start()
        waiting.join(30)
        assert not waiting.is_alive(), "wait() waited for the stuck thread"
        assert process.exit_code == EXIT_STUCK
        assert [thread.name for thread in process.stuck] == ["pipeline0"]
        [letter] = letters(runtime)
        assert letter.error_code == "processing_timeout"
    finally:
        release.set()
        for thread in process.threads:
            thread.join(30)
        runtime.close()
