"""Group commit: concurrent webhook stores share transactions, and each answers only after its commit."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select

from gateway.ingest import InboxBatcher
from gateway.records import InboxItem
from gateway.runtime import Runtime
from gateway.storage.queues import InboxWrite
from gateway.storage.tables import inbox


def item(n: int) -> InboxItem:
    return InboxItem(f"SM{n:032d}", b"Body=hi", "application/x-www-form-urlencoded")


def test_concurrent_requests_are_committed_together_and_each_sees_its_own_count(runtime: Runtime) -> None:
    commits = []
    event.listen(runtime.engine, "commit", lambda conn: commits.append(1))
    batcher = InboxBatcher(runtime.queues)
    gate = threading.Barrier(16)

    def send(n: int) -> tuple[int, int]:
        gate.wait()
        counted = batcher.store("sms-main", [item(n), item(n % 8)], {}, "https://gw.example.com/hooks/sms-main")
        with runtime.engine.connect() as conn:  # committed by the time store() returns
            assert conn.execute(select(func.count()).select_from(inbox).where(
                inbox.c.provider_id == f"SM{n:032d}")).scalar_one() == 1
        return counted.stored, counted.duplicates

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(16)))
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(inbox)).scalar_one() == 16
    assert sum(stored for stored, _ in results) == 16
    assert sum(duplicates for _, duplicates in results) == 16
    assert len(commits) < 16, "some requests shared a commit"


def test_a_failed_commit_fails_every_request_in_it(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    batcher = InboxBatcher(runtime.queues)

    def broken(writes: object) -> list[object]:
        raise OSError("disk full")

    monkeypatch.setattr(runtime.queues, "store_inbox_batch", broken)
    with pytest.raises(OSError, match="disk full"):
        batcher.store("sms-main", [item(1)], {}, "https://gw.example.com/hooks/sms-main")
    monkeypatch.undo()
    assert batcher.store("sms-main", [item(1)], {}, "https://gw.example.com/hooks/sms-main").stored == 1


def test_one_bad_request_does_not_fail_the_others_in_its_commit(runtime: Runtime,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = runtime.queues.store_inbox_batch

    def picky(writes):  # type: ignore[no-untyped-def]
        if any(w.items[0].provider_id == "poison" for w in writes):
            raise ValueError("cannot store this one")
        return real(writes)

    monkeypatch.setattr(runtime.queues, "store_inbox_batch", picky)
    batcher = InboxBatcher(runtime.queues)
    batch = [(InboxWrite("sms-main", [item(1)], {}, "u"), Future()), (InboxWrite("sms-main", [
        InboxItem("poison", b"x", "text/plain")], {}, "u"), Future())]
    batcher._one_by_one(batch)  # what the writer does after a failed shared commit
    assert batch[0][1].result().stored == 1
    with pytest.raises(ValueError):
        batch[1][1].result()
