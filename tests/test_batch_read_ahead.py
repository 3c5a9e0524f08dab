"""A batch reads its senders' identifiers and customers ahead, in a few statements; what one message of the batch
changes (a new customer, an identifier added, a name set, a merge) is seen by the next ones exactly as when each
message is stored alone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event, select, update

from gateway import message_store
from gateway.config import load_config
from gateway.conversations import OpenConversations
from gateway.identity import resolve_customer
from gateway.message_store import MessageContext, MessageStore
from gateway.model import Identifier, IdentifierKind, Party
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import conversations, inbox, messages
from tests.conftest import BASE_CONFIG
from tests.test_pipeline import sms, store

NEW, MERGED, SECOND, NAMELESS, KNOWN = "+14155550101", "+14155550177", "+14155550178", "+14155550188", "+14155550199"
TALKING = "+14155550166"  # has an open conversation, last active 71 hours before the batch (the window is 72)


def customer(rt: Runtime, *idents: Identifier, name: str | None = None) -> str:
    with rt.engine.begin() as conn:
        return resolve_customer(conn, Party(identifiers=idents, display_name=name), message_id="before").customer_id


def arrivals() -> list[InboxItem]:
    return [
        sms("SM" + "1" * 32, NEW, "hello"),
        sms("SM" + "2" * 32, NEW, "the same new customer"),
        sms("SM" + "3" * 32, KNOWN, "a customer known before"),
        sms("SM" + "4" * 32, f"whatsapp:{NAMELESS}", "adds an identifier and a name", ProfileName="Ode"),
        sms("SM" + "5" * 32, NAMELESS, "sees both"),
        sms("SM" + "6" * 32, TALKING, "continues the open conversation"),
        sms("SM" + "7" * 32, TALKING, "two hours later: continues it too, since the one before moved it on"),
        sms("SM" + "8" * 32, SECOND, "from the second number of a customer with two"),
        sms("SM" + "9" * 32, f"whatsapp:{MERGED}", "joins that customer to the whatsapp one", ProfileName="Wren"),
        sms("SM" + "a" * 32, SECOND, "after the merge"),
    ]


def run(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], list[int]]:
    """Store the arrivals; the customer each message's mapping saw and the one its row was stored with (ids replaced
    by the order in which they first appeared), its conversation and whether that follows an earlier one, and the
    sizes of the claims."""
    customer(rt, Identifier(kind=IdentifierKind.WHATSAPP, value=MERGED))
    customer(rt, *(Identifier(kind=IdentifierKind.PHONE, value=number) for number in (MERGED, SECOND)))
    customer(rt, Identifier(kind=IdentifierKind.PHONE, value=NAMELESS))
    eve = customer(rt, Identifier(kind=IdentifierKind.PHONE, value=KNOWN), name="Eve")
    seen: list[dict[str, Any]] = []

    def recording(message: Any, customer: dict[str, Any], *args: Any, **kwargs: Any) -> MessageContext:
        seen.append(customer)
        return MessageContext(message, customer, *args, **kwargs)

    worker = PipelineWorker(rt, "test-p")
    store(rt, sms("SM" + "0" * 32, TALKING, "the conversation before"), sms("SM" + "b" * 32, KNOWN, "long ago"))
    while batches := worker.claim():
        for rows in batches:
            worker.process(rows)
    monkeypatch.setattr(message_store, "MessageContext", recording)
    now = utcnow()
    with rt.engine.begin() as conn:
        conn.execute(update(conversations).values(last_activity_at=now - timedelta(hours=71)))
        conn.execute(update(conversations).where(conversations.c.customer_id == eve).values(
            last_activity_at=now - timedelta(hours=100)))
    store(rt, *arrivals())
    with rt.engine.begin() as conn:
        conn.execute(update(inbox).where(inbox.c.provider_id == "SM" + "7" * 32).values(
            received_at=now + timedelta(hours=2)))
    claims = []
    while batches := worker.claim():
        for rows in batches:
            claims.append(len(rows))
            worker.process(rows)
    with rt.engine.connect() as conn:
        stored = {row.provider_message_id: row for row in conn.execute(select(messages))}
        previous = dict(conn.execute(select(conversations.c.id, conversations.c.previous_id)).all())
    order: dict[str, int] = {}
    threads: dict[str, int] = {}
    return [{**seen_customer, "id": order.setdefault(seen_customer["id"], len(order)),
             "stored_with": order.setdefault(stored[item.provider_id].customer_id, len(order)),
             "conversation": threads.setdefault(stored[item.provider_id].conversation_id, len(threads)),
             "rule": stored[item.provider_id].thread_rule,
             "previous": previous[stored[item.provider_id].conversation_id] is not None}
            for seen_customer, item in zip(seen, arrivals(), strict=True)], claims


def runtime_with(write_config: Callable[..., Path], folder: str, batch: int, url: str | None = None) -> Runtime:
    text = BASE_CONFIG.replace("workers: {", f"workers: {{inbox_batch_size: {batch}, ")
    url = url or f"sqlite:///{write_config(text).parent / folder}.db"
    return build_runtime(load_config(write_config(text, storage_url=url, name=f"{folder}.yaml")),
                         http=requests.Session())


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_batch_sees_what_its_earlier_messages_changed_as_messages_stored_alone_do(
        write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
        database: str) -> None:
    """Stored alone on SQLite, and as one batch on SQLite or on PostgreSQL (which locks the batch's customers)."""
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    alone_rt, batch_rt = runtime_with(write_config, "alone", 1), runtime_with(write_config, "batch", 100, url)
    try:
        alone, alone_claims = run(alone_rt, monkeypatch)
        monkeypatch.setattr(MessageStore, "store_row_by_row", lambda *_: pytest.fail("the batch failed"))
        batched, batch_claims = run(batch_rt, monkeypatch)
    finally:
        alone_rt.close()
        batch_rt.close()

    assert (alone_claims, batch_claims) == ([1] * 10, [10])
    assert batched == alone
    merged = [{"kind": kind, "value": value} for kind, value in (("phone", MERGED), ("phone", SECOND),
                                                                 ("whatsapp", MERGED))]
    assert [(c["id"], c["stored_with"]) for c in batched] == [
        (0, 0), (0, 0), (1, 1), (2, 2), (2, 2), (3, 3), (3, 3), (4, 4), (5, 5), (5, 5)]
    assert [(c["conversation"], c["rule"]) for c in batched] == [
        (0, "new"), (0, "continuity"), (1, "new"), (2, "new"), (2, "continuity"), (3, "continuity"),
        (3, "continuity"), (4, "new"), (4, "continuity"), (4, "continuity")], "a merged customer's conversation goes on"
    assert batched[2]["display_name"] == "Eve"
    assert [c["previous"] for c in batched] == [False] * 2 + [True] + [False] * 7, "Eve's old conversation"
    assert batched[4]["display_name"] == "Ode" and len(batched[4]["identifiers"]) == 2
    assert batched[9]["display_name"] == "Wren" and sorted(batched[9]["identifiers"], key=str) == merged


def statements_of_one_claim(runtime: Runtime) -> list[str]:
    """The statements (whitespace folded) a pipeline worker runs to process what one claim took."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    worker = PipelineWorker(runtime, "test-p")
    [rows] = worker.claim()
    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        worker.process(rows)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    return statements


def test_a_batch_of_known_senders_reads_identities_and_customers_once(runtime: Runtime) -> None:
    senders = [f"+1415555{n:04d}" for n in range(12)]
    for sender in senders:
        customer(runtime, Identifier(kind=IdentifierKind.PHONE, value=sender), name=f"customer {sender[-2:]}")
    store(runtime, *[sms(f"SM{n:032d}", sender, "hello again") for n, sender in enumerate(senders)])
    reads = [s for s in statements_of_one_claim(runtime) if s.startswith("SELECT") and "identities" in s]

    identity_reads = [s for s in reads if "identities.kind" in s and "crm_directory" in s]
    context_reads = [s for s in reads if "identities.kind" in s and "crm_directory" not in s]
    assert (len(identity_reads), len(context_reads)) == (1, 1), reads


def test_a_conversation_a_thread_key_found_outside_what_was_read_makes_the_batch_read_again() -> None:
    now = utcnow()
    known = OpenConversations(now - timedelta(hours=72))
    known.customers.update({"ann", "bob"})
    known.add("ann", "conversation-of-ann", now - timedelta(hours=1), "sms-main")

    known.touched("conversation-of-ann", now, "thread_key")
    known.touched("conversation-of-someone-new", now, "continuity")  # a customer not read ahead: its own family
    assert known.latest("ann", now - timedelta(minutes=1), None) == "conversation-of-ann"
    assert known.customers == {"ann", "bob"}

    known.touched("conversation-of-anyone", now, "thread_key")
    assert known.customers == set() and known.latest("ann", now - timedelta(hours=72), None) is None


def test_a_new_customers_message_is_threaded_without_reading_conversations(runtime: Runtime) -> None:
    store(runtime, sms("SM" + "1" * 32, NEW, "hello"), sms("SM" + "2" * 32, KNOWN, "hi"))
    statements = statements_of_one_claim(runtime)

    assert [s for s in statements if "FROM conversations" in s or "family" in s] == []
    assert len([s for s in statements if s.startswith("INSERT INTO conversations")]) == 2
