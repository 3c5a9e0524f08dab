"""Group commit: concurrent webhook stores share transactions, and each answers only after its commit."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select

from gateway.ingest import InboxBatcher
from gateway.runtime import Runtime
from gateway.storage.tables import inbox
from gateway.webhooks import InboxItem


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
