"""A batch of inbox rows is stored in one transaction without a savepoint per row; when any row fails, that
transaction is rolled back and the batch stored again row by row (each row in a savepoint), and a row failing
there too is retried alone. Every other row is stored exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.message_store import Prepared
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime
from gateway.storage.tables import inbox, messages, outbox
from tests.test_pipeline import count, sms, store

ANN, BOB, CID = "+14155550101", "+14155550102", "+14155550103"


def arrive(rt: Runtime) -> None:
    store(rt, sms("SM" + "a" * 32, ANN, "ann"), sms("SM" + "b" * 32, BOB, "bob"), sms("SM" + "c" * 32, CID, "cid"))


def statuses(rt: Runtime) -> dict[str, str]:
    with rt.engine.connect() as conn:
        return {row.provider_id[2:3]: row.status for row in conn.execute(select(inbox))}


def tries_failing(worker: PipelineWorker, monkeypatch: pytest.MonkeyPatch, sender: str, failures: int) -> Counter[str]:
    """``worker.store.store_row`` failing for ``sender``'s row the first ``failures`` times; the tries per sender."""
    tries: Counter[str] = Counter()
    store_row = worker.store.store_row

    def flaky(conn: Any, item: Prepared, batch: Any) -> None:
        name = item.messages[0].text or ""
        tries[name] += 1
        store_row(conn, item, batch)  # the row's writes happen, and must be rolled back
        if name == sender and tries[name] <= failures:
            raise RuntimeError("database hiccup")

    monkeypatch.setattr(worker.store, "store_row", flaky)
    return tries


def test_a_row_failing_in_the_batch_is_stored_again_row_by_row(runtime: Runtime,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    arrive(runtime)
    worker = PipelineWorker(runtime, "test-p")
    tries = tries_failing(worker, monkeypatch, "bob", failures=1)
    [batch] = worker.claim()
    worker.process(batch)

    assert tries == {"ann": 2, "bob": 2, "cid": 1}, "the batch as a whole (up to bob), then each row in its savepoint"
    assert statuses(runtime) == {"a": "done", "b": "done", "c": "done"}
    assert count(runtime, messages) == 3
    assert count(runtime, outbox) == 3, "nothing of the rolled-back batch is left behind"


def test_a_row_failing_in_its_savepoint_too_is_retried_alone(runtime: Runtime,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    arrive(runtime)
    worker = PipelineWorker(runtime, "test-p")
    tries = tries_failing(worker, monkeypatch, "bob", failures=2)
    [batch] = worker.claim()
    worker.process(batch)

    assert tries == {"ann": 2, "bob": 3, "cid": 1}, "bob's third try is its own transaction"
    assert statuses(runtime) == {"a": "done", "b": "done", "c": "done"}
    with runtime.engine.connect() as conn:
        stored = Counter(conn.execute(select(messages.c.provider_message_id)).scalars())
    assert sorted(stored.values()) == [1, 1, 1]
    assert count(runtime, outbox) == 3


def test_a_row_whose_lease_was_lost_is_not_stored_and_the_others_are(runtime: Runtime) -> None:
    arrive(runtime)
    worker = PipelineWorker(runtime, "test-p")
    [batch] = worker.claim()
    with runtime.engine.begin() as conn:  # another worker took bob's row over (the lease ran out meanwhile)
        conn.execute(update(inbox).where(inbox.c.provider_id == "SM" + "b" * 32).values(lease_owner="other"))
    worker.process(batch)

    assert statuses(runtime) == {"a": "done", "b": "pending", "c": "done"}
    assert count(runtime, messages) == 2
    assert count(runtime, outbox) == 2


def test_a_message_stored_before_is_not_stored_again_in_a_batch(runtime: Runtime) -> None:
    arrive(runtime)
    worker = PipelineWorker(runtime, "test-p")
    [batch] = worker.claim()
    worker.process(batch)
    with runtime.engine.begin() as conn:  # the provider delivers ann's message again, as a new inbox row
        conn.execute(update(inbox).where(inbox.c.provider_id == "SM" + "a" * 32).values(
            provider_id="SM" + "a" * 31 + "x"))
    store(runtime, sms("SM" + "a" * 32, ANN, "ann"), sms("SM" + "d" * 32, ANN, "ann again"))
    [batch] = worker.claim()
    worker.process(batch)

    assert count(runtime, messages) == 4
    assert count(runtime, outbox) == 4
    assert set(statuses(runtime).values()) == {"done"}


def test_a_row_with_nothing_to_enrich_skips_the_enricher(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.channels["sms-main"], "enriches_only_media", True, raising=False)

    def no_job(*_: Any, **__: Any) -> Any:
        raise AssertionError("a text message from a connector that only downloads media needs no enrichment")

    monkeypatch.setattr(runtime.enricher, "job", no_job)
    arrive(runtime)
    worker = PipelineWorker(runtime, "test-p")
    [batch] = worker.claim()
    worker.process(batch)

    assert statuses(runtime) == {"a": "done", "b": "done", "c": "done"}
    with runtime.engine.connect() as conn:
        languages = {row.data["language"] for row in conn.execute(select(messages.c.data))}
    assert None not in languages, "the language is detected as for an enriched message"


def test_a_pipeline_claim_takes_up_to_inbox_batch_size_rows_whatever_batch_size_says(runtime: Runtime) -> None:
    workers = runtime.config.settings.workers
    assert (workers.inbox_batch_size, workers.batch_size) == (100, 20), "the defaults"
    store(runtime, *[sms(f"SM{n:032d}", f"+1415555{n:04d}", f"hello #{n}") for n in range(130)])
    worker = PipelineWorker(runtime, "test-p")

    [first] = worker.claim()
    worker.process(first)
    [second] = worker.claim()

    assert (len(first), len(second)) == (100, 30)
    assert count(runtime, messages) == 100, "the first claim, stored in one transaction"
