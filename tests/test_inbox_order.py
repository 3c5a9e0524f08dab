"""A customer's messages reach the CRM in the order they arrived, even when a worker dies holding one of them.

Before, a row claimed by a killed worker waited out its lease while the customer's newer rows went ahead (the CRM
saw ``[0..5, 7, 8, 9, 6]``); and a restarted worker waited out its dead predecessor's leases before taking its rows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.records import RawRecord
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.liveness import Liveness
from gateway.storage.queues import Queues
from gateway.storage.tables import inbox
from gateway.worker import drain_once
from tests.conftest import BASE_CONFIG
from tests.test_pipeline import sms, store

ANN, BOB = "+14155550101", "+14155550102"


class Crash(BaseException):
    """The worker process dying mid-row (SIGKILL): nothing after it runs, no handler sees it."""


@pytest.fixture
def rt(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    text = BASE_CONFIG.replace("workers: {", "workers: {lease_seconds: 120, ")
    runtime = build_runtime(load_config(write_config(text)), http=requests.Session())
    yield runtime
    runtime.close()


def sid(name: str, n: int) -> str:
    return f"SM{name}{n:030d}"


def arrive(rt: Runtime, name: str, phone: str, *numbers: int) -> None:
    store(rt, *(sms(sid(name, n), phone, f"{name} #{n}") for n in numbers))


def drain(rt: Runtime) -> None:
    """A live worker runs pipeline and delivery until nothing is due."""
    pipeline, delivery = PipelineWorker(rt, "live:1:pipeline0"), DeliveryWorker(rt, "live:1:delivery0")
    while drain_once(pipeline) + drain_once(delivery):
        pass


def make_due(rt: Runtime) -> None:
    """Time passes: rows sent back to wait are due again (the clock, not a sleep)."""
    with rt.engine.begin() as conn:
        conn.execute(update(inbox).where(inbox.c.status == "pending").values(
            available_at=utcnow() - timedelta(seconds=1)))


def leases_run_out(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(inbox).where(inbox.c.lease_owner.is_not(None)).values(
            lease_until=utcnow() - timedelta(seconds=1)))


def crm(rt: Runtime, tmp_path: Path) -> dict[str, list[str]]:
    """The CRM's messages per conversation, in the order they were written."""
    path = tmp_path / "out/crm.jsonl"
    conversations: dict[str, list[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        conversations.setdefault(record["conversation"]["id"], []).append(record["message"]["text"])
    return conversations


def texts(rt: Runtime, tmp_path: Path) -> set[str]:
    return {text for conversation in crm(rt, tmp_path).values() for text in conversation}


def status(rt: Runtime) -> dict[str, str]:
    with rt.engine.connect() as conn:
        return {row.provider_id: row.status for row in conn.execute(select(inbox))}


def test_a_row_held_by_a_dead_worker_holds_back_its_senders_later_rows_only(
        rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrive(rt, "ann", ANN, 0)
    dead = PipelineWorker(rt, "dead:9:pipeline0")
    [batch] = dead.claim()

    def killed(*_: Any) -> None:
        raise Crash  # after normalising: the row's sender is known

    monkeypatch.setattr(dead.store, "store_row", killed)
    with pytest.raises(Crash):
        dead.process(batch)
    arrive(rt, "ann", ANN, 1, 2)
    arrive(rt, "bob", BOB, 0, 1)

    drain(rt)
    assert texts(rt, tmp_path) == {"bob #0", "bob #1"}, "the other customer goes on"
    assert {k: v for k, v in status(rt).items() if k.startswith("SMann")} == dict.fromkeys(
        [sid("ann", 0), sid("ann", 1), sid("ann", 2)], "pending")
    make_due(rt)
    drain(rt)
    assert texts(rt, tmp_path) == {"bob #0", "bob #1"}, "still behind the dead worker's row"

    leases_run_out(rt)
    drain(rt)
    make_due(rt)
    drain(rt)
    assert sorted(crm(rt, tmp_path).values()) == [["ann #0", "ann #1", "ann #2"], ["bob #0", "bob #1"]]
    assert set(status(rt).values()) == {"done"}


def test_a_row_claimed_but_not_yet_read_holds_back_every_later_row(
        rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrive(rt, "ann", ANN, 0)
    connector = rt.channels["sms-main"]
    normalize = connector.normalize

    def killed(record: RawRecord) -> list[Any]:
        raise Crash  # before its sender is known: it may be anyone's

    monkeypatch.setattr(connector, "normalize", killed)
    dead = PipelineWorker(rt, "dead:9:pipeline0")
    [batch] = dead.claim()
    with pytest.raises(Crash):
        dead.process(batch)
    monkeypatch.setattr(connector, "normalize", normalize)
    arrive(rt, "ann", ANN, 1)
    arrive(rt, "bob", BOB, 0)

    drain(rt)
    assert texts(rt, tmp_path) == set()
    leases_run_out(rt)
    drain(rt)
    make_due(rt)
    drain(rt)
    assert sorted(crm(rt, tmp_path).values()) == [["ann #0", "ann #1"], ["bob #0"]]


def test_rows_waiting_for_a_retry_keep_their_senders_order(rt: Runtime, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    arrive(rt, "ann", ANN, 0)
    worker = PipelineWorker(rt, "live:1:pipeline0")
    failing = worker.store.store_row

    def fails_once(*args: Any) -> None:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(worker.store, "store_row", fails_once)
    [batch] = worker.claim()
    worker.process(batch)  # failed: rescheduled for a retry, due in an hour
    monkeypatch.setattr(worker.store, "store_row", failing)
    with rt.engine.begin() as conn:
        conn.execute(update(inbox).where(inbox.c.status == "pending").values(
            available_at=utcnow() + timedelta(hours=1)))
    arrive(rt, "ann", ANN, 1)
    drain(rt)
    assert texts(rt, tmp_path) == set()
    make_due(rt)
    drain(rt)  # the retried row is claimed with the fresh ones, which go first: the later one waits again
    make_due(rt)
    drain(rt)
    assert list(crm(rt, tmp_path).values()) == [["ann #0", "ann #1"]]


HOLDER = """
import sys, time
from pathlib import Path
from gateway.storage.db import make_engine
from gateway.storage.liveness import Liveness
from gateway.storage.queues import Queues
engine = make_engine(sys.argv[1])
liveness = Liveness(engine, Path(sys.argv[2]))
liveness.hold()
rows = Queues(engine, liveness).claim_inbox(liveness.process + ":pipeline0", 10, 120)
print(len(rows), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_restarted_worker_takes_over_its_dead_predecessors_rows_at_once(
        backend: str, write_config: Callable[..., Path], request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    rt = build_runtime(load_config(write_config(storage_url=url)), http=requests.Session())
    lock_dir = rt.data_dir / "locks"
    try:
        arrive(rt, "ann", ANN, 0, 1, 2)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, rt.engine.url.render_as_string(False),
                                   str(lock_dir)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "3"

            def restarted() -> Queues:  # a new process's queues: its first claim looks for workers that are gone
                return Queues(rt.engine, Liveness(rt.engine, lock_dir))

            assert restarted().claim_inbox("new:2:pipeline0", 10, 120) == [], "a live holder keeps its rows"
            holder.send_signal(signal.SIGKILL)
            assert holder.wait(30) == -signal.SIGKILL
            rows = restarted().claim_inbox("new:2:pipeline0", 10, 120)
        finally:
            holder.kill()
            holder.wait(30)
            if holder.stdout is not None:
                holder.stdout.close()
        # taken over long before the 120 s leases end; the killed claim still counts (one row at a time)
        assert [(row.lease_owner, row.attempts) for row in rows] == [("new:2:pipeline0", 2)]
        assert rows[0].lease_until > utcnow() + timedelta(seconds=100)
    finally:
        rt.close()
