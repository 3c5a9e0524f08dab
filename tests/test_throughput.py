"""The hot path's statement budget: batches settle with one statement each, not one per message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, select

from gateway.delivery import DeliveryWorker
from gateway.identity.suggest import suggest_for_new_customer
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime
from gateway.storage.tables import delivery_log, outbox
from gateway.worker import drain_once
from tests.test_identity import email, party, resolve
from tests.test_pipeline import sms, store


@contextmanager
def statements(rt: Runtime) -> Iterator[list[str]]:
    """Every statement sent to the database, on one line (an executemany counts once)."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(rt.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(rt.engine, "before_cursor_execute", count)


def starting(seen: list[str], prefix: str) -> int:
    return sum(1 for statement in seen if statement.startswith(prefix))


def test_delivery_settles_a_batch_with_one_outbox_update_and_one_log_insert(runtime: Runtime) -> None:
    store(runtime, *(sms(f"SM{n:032d}", f"+1555000{n:04d}", f"hello {n}") for n in range(6)))
    while drain_once(PipelineWorker(runtime, "p")):
        pass
    delivery = DeliveryWorker(runtime, "d")
    with statements(runtime) as seen:
        assert drain_once(delivery) == 6
    assert starting(seen, "UPDATE outbox SET status=") == 1  # every delivered row at once
    assert starting(seen, "INSERT INTO delivery_log") == 1
    # the batch's messages, customers, identifiers, conversations and CRM links read once each, the links written once
    for table in ("messages", "customers", "identities", "conversations", "crm_links"):
        assert starting(seen, f"SELECT {table}.") == 1, (table, seen)
    assert starting(seen, "INSERT INTO crm_links") == 1
    with runtime.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.status, outbox.c.lease_owner, outbox.c.delivered_at)).all()
        logged = conn.execute(select(delivery_log.c.outbox_id, delivery_log.c.outcome)).all()
    assert [(status, owner) for status, owner, _ in rows] == [("done", None)] * 6
    assert all(at is not None for _, _, at in rows)
    assert sorted(logged) == [(n, "delivered") for n in range(1, 7)]


def test_suggestions_read_the_alike_customers_identifiers_in_one_query(runtime: Runtime) -> None:
    with runtime.engine.begin() as conn:
        for n in range(8):
            resolve(conn, party(email(f"asha.rao+{n}@example.com"), name="Asha Rao"), f"m{n}")
        new = resolve(conn, party(email("asha.rao@example.com"), name="Asha Rao"), "m-new")
        with statements(runtime) as seen:
            made = suggest_for_new_customer(conn, new, 85)
    assert len(made) == 8  # each alike customer's address differs only by its +tag
    assert starting(seen, "SELECT identities") == 1
