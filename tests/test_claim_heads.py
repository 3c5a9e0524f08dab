"""The outbox and sends claims take each conversation's oldest pending row alone, on SQLite and PostgreSQL, and
find it through the partial indexes of pending rows (migration 0020), whatever the table's settled history."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Table, event, insert

from gateway.storage import queues as queues_module
from gateway.storage.db import make_engine, migrate, utcnow
from gateway.storage.queues import _OUTBOX_HEAD, _SENDS_HEAD, Queues, _claim_statements
from gateway.storage.tables import conversations, customers, inbox, messages, outbox, sends

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PAST, LATER = NOW - timedelta(minutes=5), NOW + timedelta(minutes=5)


@dataclass(frozen=True)
class QueueRow:
    """One row to store: its conversation (and CRM), status, when it is due and until when it is leased."""

    conversation: str
    crm: str = "zd"
    status: str = "pending"
    available_at: datetime = PAST
    lease_until: datetime | None = None


# ids follow the list's order; the comments say what the claim must make of each row
ROWS = [
    QueueRow("settled", status="done"),  # settled rows never hold anything back
    QueueRow("settled", status="dead"),
    QueueRow("a"),  # a's head
    QueueRow("b", lease_until=LATER),  # b's head, held by a worker: b gives nothing
    QueueRow("c", available_at=LATER),  # c's head, waiting out a retry: c gives nothing
    QueueRow("d", lease_until=PAST),  # d's head, its lease run out: claimable
    QueueRow("a"),  # behind a's head
    QueueRow("b"),  # behind a leased head: never overtakes it
    QueueRow("c"),  # behind a waiting head
    QueueRow("a", crm="sf"),  # the same conversation to another CRM: a head of its own
    QueueRow("settled"),  # after the settled rows: a head
    QueueRow("e", status="done"),
    QueueRow("e"),  # behind a settled row only: a head
    QueueRow("f", crm="sf", lease_until=LATER),
    QueueRow("f", crm="sf"),
    QueueRow("g"),
]


def expected_heads(rows: dict[int, QueueRow], limit: int, crms: set[str] | None = None,
                   by_crm: bool = True) -> list[int]:
    """What the claim means, written plainly: the oldest pending row of each conversation, if due and free."""
    heads: dict[tuple[str, str], int] = {}
    for row_id in sorted(rows):
        row = rows[row_id]
        if row.status == "pending":
            heads.setdefault((row.crm if by_crm else "", row.conversation), row_id)
    claimable = [row_id for row_id in sorted(heads.values())
                 if rows[row_id].available_at <= NOW
                 and (rows[row_id].lease_until is None or rows[row_id].lease_until < NOW)
                 and (crms is None or rows[row_id].crm in crms)]
    return claimable[:limit]


def store(conn: Connection, table: Table, rows: Sequence[QueueRow],
          before: Sequence[QueueRow] = ()) -> dict[int, QueueRow]:
    """``before`` (in one statement), then ``rows`` one by one, each with the message it refers to; ``rows`` by id."""
    conn.execute(customers.insert().values(id="cust", created_at=NOW, updated_at=NOW))
    inbox_id = conn.execute(inbox.insert().values(
        connector="sms", provider_id="p", kind="message", content_type="text/plain", headers={}, body=b"",
        public_url="https://gw.example.com", received_at=NOW, status="done", attempts=0,
        available_at=NOW)).inserted_primary_key[0]
    conn.execute(conversations.insert().values(id="conv", customer_id="cust", channel="sms", connector="sms",
                                               status="open", created_at=NOW, last_activity_at=NOW))
    conn.execute(insert(messages), [
        {"id": f"m{n}", "inbox_id": inbox_id, "connector": "sms", "provider_message_id": f"pm{n}",
         "customer_id": "cust", "conversation_id": "conv", "thread_rule": "new", "data": {}, "received_at": NOW,
         "created_at": NOW} for n in range(len(before) + len(rows))])
    specific: dict[str, Any] = {"fields": {}} if table is outbox else {"channel": "sms"}

    def values(n: int, row: QueueRow) -> dict[str, Any]:
        crm = {"crm": row.crm} if table is outbox else {}
        return {**specific, **crm, "message_id": f"m{n}", "conversation_id": row.conversation, "status": row.status,
                "attempts": 0, "available_at": row.available_at, "lease_until": row.lease_until,
                "lease_owner": None if row.lease_until is None else "w", "created_at": NOW}

    if before:
        conn.execute(insert(table), [values(n, row) for n, row in enumerate(before)])
    return {int(conn.execute(table.insert().values(**values(len(before) + n, row))).inserted_primary_key[0]): row
            for n, row in enumerate(rows)}


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queues_module, "utcnow", lambda: NOW)


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize(("limit", "crms"), [(100, None), (3, None), (100, ["sf"]), (2, ["zd"]), (100, ["nowhere"])])
def test_claim_outbox_takes_each_conversations_oldest_pending_row(migrated_engine: Engine, limit: int,
                                                                  crms: list[str] | None) -> None:
    with migrated_engine.begin() as conn:
        rows = store(conn, outbox, ROWS)
    groups = Queues(migrated_engine).claim_outbox("me", limit, 30, crms=crms)
    claimed = [group[0].id for group in groups]
    assert claimed == expected_heads(rows, limit, None if crms is None else set(crms))
    assert all(len(group) == 1 for group in groups)
    if crms is None and limit >= len(ROWS):
        # a's head, d's expired lease, a to the other CRM, "settled", e and g
        assert [(rows[i].crm, rows[i].conversation) for i in claimed] == [
            ("zd", "a"), ("zd", "d"), ("sf", "a"), ("zd", "settled"), ("zd", "e"), ("zd", "g")]
    # the heads just claimed are leased now: their conversations give nothing more, the others what was left over
    rest = [group[0].id for group in Queues(migrated_engine).claim_outbox("other", 100, 30, crms=crms)]
    assert rest == expected_heads(rows, 100, None if crms is None else set(crms))[limit:]


@pytest.mark.usefixtures("fixed_clock")
def test_claim_sends_takes_each_conversations_oldest_pending_row(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as conn:
        rows = store(conn, sends, ROWS)
    claimed = [row.id for row in Queues(migrated_engine).claim_sends("me", 100, 30)]
    # sends have no CRM: a to "sf" is behind a's head, and f's second row behind its leased head
    assert claimed == expected_heads(rows, 100, by_crm=False)
    assert [rows[i].conversation for i in claimed] == ["a", "d", "settled", "e", "g"]


def _plan(conn: Connection, engine: Engine, table: Table, head: Any) -> str:
    """The plan of the claim's candidate query, in the claim's settings; on PostgreSQL the generic plan a prepared
    statement gets."""
    claim = _claim_statements(table, [head], engine.dialect.name != "sqlite")
    compiled = claim.candidates.statement.compile(dialect=engine.dialect)
    if engine.dialect.name == "sqlite":
        parameters = compiled.construct_params({"now": NOW.strftime("%Y-%m-%d %H:%M:%S.%f"), "limit": 20})
        ordered = tuple(parameters[name] for name in compiled.positiontup or ())
        return "\n".join(str(row) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.string}", ordered))
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}"

    sql = re.sub(r"%\((\w+)\)s", numbered, compiled.string)
    assert claim.unsorted
    conn.exec_driver_sql("SET LOCAL enable_sort = off")
    conn.exec_driver_sql(f"PREPARE claim AS {sql}")
    conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    arguments = ", ".join({"now": f"'{NOW.isoformat()}'::timestamptz", "limit": "20"}[name] for name in names)
    plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE claim({arguments})"))
    conn.exec_driver_sql("DEALLOCATE claim")
    return plan


@pytest.mark.parametrize("analyzed", [True, False], ids=["analyzed", "never-analyzed"])
@pytest.mark.parametrize(("table", "head", "walk", "probe"), [
    (outbox, _OUTBOX_HEAD, "ix_outbox_pending", "ix_outbox_pending_order"),
    (sends, _SENDS_HEAD, "ix_sends_pending", "ix_sends_pending_order"),
])
def test_the_claim_reads_pending_rows_through_their_partial_indexes(migrated_engine: Engine, table: Table,
                                                                   head: Any, walk: str, probe: str,
                                                                   analyzed: bool) -> None:
    """With thousands of settled rows in front of a backlog, the claim reads pending rows in id order (no sort of
    the backlog) and probes each conversation's lowest pending id. The status is written into the SQL: bound as a
    parameter, neither PostgreSQL's generic plan nor SQLite could use an index of pending rows. Without statistics
    PostgreSQL would sort the backlog but for the claim's ``enable_sort``; SQLite, which has none until someone
    runs ANALYZE, still sorts the due pending rows, probing each once."""
    settled = [QueueRow(f"old{n % 97}", status="done") for n in range(3000)]
    backlog = [QueueRow(f"c{n % 150}") for n in range(600)]
    with migrated_engine.begin() as conn:
        store(conn, table, ROWS, before=settled + backlog)
    with migrated_engine.connect() as conn:
        if analyzed:
            conn.exec_driver_sql("ANALYZE")
        plan = _plan(conn, migrated_engine, table, head)
        conn.rollback()
    assert probe in plan, plan
    if analyzed or migrated_engine.dialect.name != "sqlite":
        assert walk in plan, plan
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.usefixtures("fixed_clock")
def test_the_claims_read_the_index_of_pending_rows_never_sorting(migrated_engine: Engine) -> None:
    """On PostgreSQL the inbox, outbox and sends claims run their candidates with ``enable_sort`` off (``SET LOCAL``:
    for the claim's transaction alone); on SQLite, which plans without statistics, the candidates are read ``INDEXED
    BY`` the pending rows' index. The notes' claim, which has no such index, keeps the planner's choice."""
    with migrated_engine.begin() as conn:
        store(conn, outbox, ROWS)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        statements.append(sql)

    queues = Queues(migrated_engine)
    event.listen(migrated_engine, "before_cursor_execute", record)
    claims = {}
    try:
        for table, claim in (("outbox", queues.claim_outbox), ("sends", queues.claim_sends),
                             ("inbox", queues.claim_inbox), ("crm_notes", queues.claim_notes)):
            statements[:] = []
            claim("me", 10, 30)
            claims[table] = list(statements)
    finally:
        event.remove(migrated_engine, "before_cursor_execute", record)
    postgresql = migrated_engine.dialect.name == "postgresql"
    off = ["SET LOCAL enable_sort = off"] if postgresql else []
    for table in ("outbox", "sends", "inbox"):
        claim = claims[table]
        assert claim[:len(off)] == off
        assert claim[len(off)].startswith(f"SELECT {table}.id, {table}.attempts"), claim
        assert (f"FROM {table} INDEXED BY ix_{table}_pending " in claim[len(off)]) is not postgresql, claim
    assert claims["crm_notes"][0].startswith("SELECT crm_notes.id, crm_notes.attempts"), claims["crm_notes"]
    assert "INDEXED BY" not in claims["crm_notes"][0]


def test_on_sqlite_the_inbox_claim_walks_the_pending_rows_in_id_order_without_a_sort(tmp_path: Path) -> None:
    """Without the index SQLite read every pending row through ``ix_inbox_claim`` and sorted them: 19 ms a claim
    with 50,000 pending rows, against 0.2 ms."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    migrate(engine)
    claim = _claim_statements(inbox, (), False).candidates._for(engine.dialect, {})
    assert claim is not None
    now = utcnow()
    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + claim.sql,
                                                       tuple(claim.parameters({"now": now, "limit": 10})[1]))]
    engine.dispose()
    assert plan == ["SCAN inbox USING INDEX ix_inbox_pending"], plan
