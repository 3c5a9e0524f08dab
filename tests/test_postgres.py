"""PostgreSQL: two ``gateway work`` processes share the queues and deliver into a fake Zendesk with no double
delivery; ``claim_outbox`` from several connections never hands one row to two claimers and keeps each
conversation's order."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, text, update

from gateway.config import load_config
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.queues import Queues
from gateway.storage.tables import conversations, customers, dead_letters, inbox, messages, outbox
from tests.fake_zendesk import FakeZendesk
from tests.helpers import (
    TWILIO_SID,
    GatewayProcess,
    free_port,
    message_sid,
    twilio_inbox_item,
    twilio_params,
    wait_for,
    write_gateway_config,
    zendesk_crm,
)

CUSTOMERS = 50
MESSAGES = 300
HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "checked-at-ingress"}


def sender(customer: int, written_nationally: bool) -> str:
    """Customer N's phone number, written the way a provider might send it."""
    return f"(415) 555-{1000 + customer}" if written_nationally else f"+1415555{1000 + customer}"


@pytest.fixture
def fake_zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk() as fake:
        yield fake


@pytest.fixture
def pg_runtime(postgres_url: str, write_config: Callable[..., Path]) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(storage_url=postgres_url)), http=requests.Session())
    yield rt
    rt.close()


@pytest.mark.parametrize("stages", [[], ["--stage", "pipeline"]], ids=["both-stages-each", "a-process-per-stage"])
def test_two_worker_processes_write_every_message_exactly_once(postgres_url: str, tmp_path: Path,
                                                               fake_zendesk: FakeZendesk, stages: list[str]) -> None:
    config_path = write_gateway_config(
        tmp_path, storage_url=postgres_url, port=free_port(), crms=zendesk_crm(fake_zendesk.url),
        routes="[{from: [sms-main], to: desk}]", workers=", batch_size: 10, delivery_threads: 2, lease_seconds: 30")
    rt = build_runtime(load_config(config_path), http=requests.Session())  # migrates before the workers start
    # two processes running both stages, or a pipeline process and a delivery process (as ``gateway run`` starts)
    layouts = [stages, ["--stage", "delivery"] if stages else []]
    workers = [GatewayProcess(["work", "-c", str(config_path), *layout], tmp_path / f"work{i}.log")
               for i, layout in enumerate(layouts)]
    try:
        items = [twilio_inbox_item(twilio_params(message_sid(n), sender(n % CUSTOMERS, n % 3 == 0),
                                                 f"message {n} from customer {n % CUSTOMERS}", TWILIO_SID))
                 for n in range(MESSAGES)]
        duplicates = 0
        claimers: set[str] = set()  # worker process ids seen holding a lease
        for start in range(0, MESSAGES, 50):  # arriving while the workers run; each chunk repeats one (a retry)
            chunk = [*items[start:start + 50], items[start]]
            counted = rt.queues.store_inbox("sms-main", chunk, HEADERS, "http://127.0.0.1/hooks/sms-main")
            duplicates += counted.duplicates
        assert duplicates == MESSAGES // 50

        def settled() -> bool:
            for proc in workers:
                assert proc.alive(), proc.output()[-3000:]
            with rt.engine.connect() as conn:
                for table in (inbox, outbox):
                    claimers.update(owner.split(":")[1] for owner in conn.execute(
                        select(table.c.lease_owner).where(table.c.lease_owner.is_not(None))).scalars())
                return fake_zendesk.message_count() >= MESSAGES and conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.status == "pending")).scalar_one() == 0
        wait_for(settled, 60, f"{MESSAGES} comments in Zendesk", interval=0.2)
    finally:
        codes = [proc.stop() for proc in workers]
    assert codes == [0, 0], "\n".join(proc.output()[-2000:] for proc in workers)
    assert claimers == {str(proc.pid) for proc in workers}, "both worker processes should have claimed work"
    with rt.engine.connect() as conn:
        rows = {name: conn.execute(select(table)).all() for name, table in (
            ("inbox", inbox), ("messages", messages), ("outbox", outbox), ("customers", customers),
            ("conversations", conversations), ("dead", dead_letters))}
    rt.close()
    assert [r.id for name in ("inbox", "outbox") for r in rows[name] if r.lease_owner is not None] == []

    assert len(rows["inbox"]) == MESSAGES and {r.status for r in rows["inbox"]} == {"done"}
    assert len(rows["messages"]) == MESSAGES
    assert {r.status for r in rows["outbox"]} == {"done"} and len(rows["outbox"]) == MESSAGES
    assert rows["dead"] == []
    assert len(rows["customers"]) == CUSTOMERS, "national and international forms must be one customer"
    assert len(rows["conversations"]) == CUSTOMERS

    # no double delivery: each gateway message id is on exactly one comment (a comment may carry several)
    per_message = fake_zendesk.comment_counts()
    assert set(per_message) == {r.id for r in rows["messages"]}
    assert [mid for mid, count in per_message.items() if count != 1] == []
    # exactly one ticket per conversation, one user per customer
    tickets = Counter(t["external_id"] for t in fake_zendesk.tickets())
    assert set(tickets) == {r.id for r in rows["conversations"]} and set(tickets.values()) == {1}
    users = Counter(u["external_id"] for u in fake_zendesk.users())
    assert set(users) == {r.id for r in rows["customers"]} and set(users.values()) == {1}
    # per conversation, messages land in outbox order (within a coalesced comment, too)
    order: dict[str, list[str]] = defaultdict(list)
    for row in sorted(rows["outbox"], key=lambda r: r.id):
        order[row.conversation_id].append(row.message_id)
    for ticket in fake_zendesk.tickets():
        assert fake_zendesk.ticket_markers(ticket["id"]) == order[ticket["external_id"]]
    # and in the order each customer sent them, though two processes took their rows ("message n", n rising)
    sent = {r.id: int(r.data["text"].split()[1]) for r in rows["messages"]}
    for ticket in fake_zendesk.tickets():
        numbers = [sent[mid] for mid in fake_zendesk.ticket_markers(ticket["id"])]
        assert numbers == sorted(numbers), f"ticket {ticket['id']} out of order: {numbers}"


def queue_conversations(rt: Runtime, conversations_wanted: int, per_conversation: int) -> list[Any]:
    """Store messages from several customers and run the pipeline in-process; return the outbox rows."""
    items = [twilio_inbox_item(twilio_params(message_sid(n), sender(n % conversations_wanted, False), f"m{n}",
                                             TWILIO_SID))
             for n in range(conversations_wanted * per_conversation)]
    rt.queues.store_inbox("sms-main", items, HEADERS, "http://127.0.0.1/hooks/sms-main")
    pipeline = PipelineWorker(rt, "pipeline-test")
    while rows := pipeline.claim():
        for row in rows:
            pipeline.process(row)
    with rt.engine.connect() as conn:
        return conn.execute(select(outbox).order_by(outbox.c.id)).all()


def test_claim_outbox_skips_rows_locked_by_another_connection(pg_runtime: Runtime) -> None:
    rows = queue_conversations(pg_runtime, 6, 3)
    assert len(rows) == 18 and len({r.conversation_id for r in rows}) == 6
    first = rows[0]
    with pg_runtime.engine.connect() as holder:
        holder.execute(text("SET lock_timeout = '5s'"))
        locked = holder.execute(select(outbox.c.id).where(outbox.c.id == first.id).with_for_update()).scalar_one()
        assert locked == first.id
        # another connection claims while the row is locked: it must not wait and must not take that row
        pool = ThreadPoolExecutor(1)
        try:
            claimed = pool.submit(pg_runtime.queues.claim_outbox, "other", 100, 30).result(timeout=3)
        finally:
            holder.rollback()  # lets a claim that waited on the lock go on, so the pool can shut down
            pool.shutdown()
    ids = [r.id for group in claimed for r in group]
    assert first.id not in ids
    oldest = {}
    for row in rows:
        oldest.setdefault(row.conversation_id, row.id)
    # one row per conversation, the oldest; none at all from the conversation whose oldest row is locked
    assert sorted(ids) == sorted(v for k, v in oldest.items() if k != first.conversation_id)


def test_concurrent_claims_never_share_a_row_and_keep_conversation_order(pg_runtime: Runtime) -> None:
    rows = queue_conversations(pg_runtime, 8, 6)
    by_id = {r.id: r for r in rows}
    queues = [Queues(pg_runtime.engine), Queues(pg_runtime.engine.execution_options())]
    claims: list[tuple[str, int]] = []
    finished: dict[str, list[int]] = defaultdict(list)
    order_violations: list[int] = []
    record = threading.Lock()

    def claimer(name: str, q: Queues) -> None:
        idle = 0
        while idle < 20:
            claimed = [row for group in q.claim_outbox(name, 3, 30) for row in group]
            if not claimed:
                idle += 1
                threading.Event().wait(0.01)
                continue
            idle = 0
            for row in claimed:
                with q.engine.connect() as conn:
                    earlier_open = conn.execute(select(func.count()).select_from(outbox).where(
                        outbox.c.conversation_id == row.conversation_id, outbox.c.id < row.id,
                        outbox.c.status != "done")).scalar_one()
                with record:
                    claims.append((name, row.id))
                    if earlier_open:
                        order_violations.append(row.id)
                    finished[row.conversation_id].append(row.id)
                    with q.engine.begin() as conn:
                        q.finish(conn, outbox, row.id, "done")

    threads = [threading.Thread(target=claimer, args=(f"claimer{i}", queues[i % 2])) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)

    claimed_ids = Counter(row_id for _, row_id in claims)
    assert set(claimed_ids) == set(by_id), "every row claimed"
    assert [row_id for row_id, n in claimed_ids.items() if n > 1] == [], "a row handed to two claimers"
    assert len({name for name, _ in claims}) > 1, "the claimers did not run concurrently"
    assert order_violations == []
    for conversation_id, done in finished.items():
        assert done == sorted(done), f"conversation {conversation_id} out of order"


def test_claim_outbox_groups_follow_their_head_and_are_taken_once(pg_runtime: Runtime) -> None:
    rows = queue_conversations(pg_runtime, 4, 5)
    first = pg_runtime.queues.claim_outbox("a", 2, 30, per_conversation=3)
    second = pg_runtime.queues.claim_outbox("b", 10, 30, per_conversation=10)
    by_conversation: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_conversation[row.conversation_id].append(row.id)
    assert len(first) == 2 and all(len(group) == 3 for group in first)
    for group in first:
        assert [r.id for r in group] == by_conversation[group[0].conversation_id][:3]
    taken_first = {r.conversation_id for g in first for r in g}
    assert {g[0].conversation_id for g in second}.isdisjoint(taken_first), "a claimed head blocks its followers"
    assert all([r.id for r in g] == by_conversation[g[0].conversation_id] for g in second)


def test_a_follower_still_leased_is_not_overtaken(pg_runtime: Runtime) -> None:
    """A crashed worker's follower lease outlives its head's by a moment: the head may be claimed again, but the
    rows behind the still-leased follower must wait, or they would reach the CRM first."""
    rows = queue_conversations(pg_runtime, 1, 4)
    head, follower = rows[0], rows[1]
    with pg_runtime.engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == head.id).values(
            lease_owner="dead:1", lease_until=utcnow() - timedelta(seconds=1)))
        conn.execute(update(outbox).where(outbox.c.id == follower.id).values(
            lease_owner="dead:1", lease_until=utcnow() + timedelta(seconds=30)))
    [group] = pg_runtime.queues.claim_outbox("new", 10, 30, per_conversation=4)
    assert [r.id for r in group] == [head.id]
    with pg_runtime.engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == follower.id).values(lease_until=None, lease_owner=None))
        conn.execute(update(outbox).where(outbox.c.id == head.id).values(lease_until=None, lease_owner=None))
    [group] = pg_runtime.queues.claim_outbox("new", 10, 30, per_conversation=4)
    assert [r.id for r in group] == [r.id for r in rows]
