"""``Prepared`` gives exactly what ``conn.execute`` gives, on SQLite and PostgreSQL, for every column type the
tables use, and runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from gateway.storage.db import make_engine
from gateway.storage.prepared import Prepared
from gateway.storage.queues import insert_for
from gateway.storage.tables import Id, Time

metadata = MetaData()
samples = Table(
    "samples", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("body", Text),
    Column("at", Time),  # the tables' UtcDateTime
    Column("naive_at", DateTime()),
    Column("aware_at", DateTime(timezone=True)),
    Column("data", JSON),
    Column("flag", Boolean),
    Column("big", BigInteger),
    Column("count", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False, default="pending"),
    Column("ratio", Float),
    Column("blob", LargeBinary),
)
stamped = Table(
    "stamped", metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", Time, nullable=False, default=lambda: datetime.now(UTC)),
)

AT = datetime(2025, 3, 9, 14, 30, 5, 123456, tzinfo=UTC)
SAMPLE_ROWS: list[dict[str, Any]] = [
    {"name": "full", "body": "héllo\nwörld", "at": AT, "naive_at": datetime(2025, 3, 9, 14, 30),
     "aware_at": AT.astimezone(timezone(timedelta(hours=-5))), "data": {"a": [1, 2.5, None, "x"], "b": {"c": True}},
     "flag": True, "big": 2**62 + 7, "ratio": 0.1, "blob": b"\x00\xff", "count": 3},
    {"name": "empty", "body": None, "at": None, "naive_at": None, "aware_at": None, "data": None, "flag": None,
     "big": None, "ratio": None, "blob": None},
    {"name": "falsy", "body": "", "at": AT.astimezone(timezone(timedelta(hours=9))), "naive_at": None,
     "aware_at": None, "data": [], "flag": False, "big": -1, "ratio": 0.0, "blob": b""},
]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'prepared.db'}" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _typed(rows: list[Any]) -> list[list[tuple[type, Any]]]:
    return [[(type(value), value) for value in row] for row in rows]


def _fill(engine: Engine) -> list[int]:
    insert = Prepared(insert_for(engine, samples).returning(samples.c.id))
    with engine.begin() as conn:
        return [insert.scalar(conn, row) for row in SAMPLE_ROWS]


def test_rows_read_are_the_rows_sqlalchemy_reads(engine: Engine) -> None:
    ids = _fill(engine)
    query = select(samples).order_by(samples.c.id)
    with engine.connect() as conn:
        expected = list(conn.execute(query))
        got = Prepared(query).all(conn)
    assert len(got) == len(SAMPLE_ROWS) and ids == [row.id for row in expected]
    assert _typed(got) == _typed(expected)
    assert [row._asdict() for row in got] == [row._asdict() for row in expected]
    assert got[0].at == AT and got[0].at.tzinfo is not None and got[0].data == SAMPLE_ROWS[0]["data"]
    assert (got[0].status, got[1].count) == ("pending", 0)  # the columns' defaults, as Core inserts them


def test_parameters_in_where_clauses_are_processed_like_sqlalchemy_does(engine: Engine) -> None:
    _fill(engine)
    query = select(samples.c.name, samples.c.at, samples.c.flag).where(
        samples.c.at >= bindparam("since"), samples.c.flag == bindparam("flag"), samples.c.status == "pending")
    since = AT.astimezone(timezone(timedelta(hours=3))) - timedelta(seconds=1)
    with engine.connect() as conn:
        for flag in (True, False):
            expected = list(conn.execute(query, {"since": since, "flag": flag}))
            assert _typed(Prepared(query).all(conn, {"since": since, "flag": flag})) == _typed(expected)
            assert len(expected) == 1


def test_in_lists_of_any_length_and_the_empty_one(engine: Engine) -> None:
    ids = _fill(engine)
    query = select(samples.c.id, samples.c.name).where(
        samples.c.id.in_(bindparam("ids", expanding=True)), samples.c.name != bindparam("not_name")).order_by(
        samples.c.id)
    prepared = Prepared(query)
    with engine.connect() as conn:
        for chosen in ([], ids[:1], ids, [ids[2], ids[0], 999]):
            parameters = {"ids": chosen, "not_name": "falsy"}
            assert _typed(prepared.all(conn, parameters)) == _typed(list(conn.execute(query, parameters)))
        names = Prepared(select(samples.c.id).where(samples.c.name.in_(bindparam("names", expanding=True))))
        assert sorted(names.scalars(conn, {"names": ["full", "empty"]})) == ids[:2]


def test_updates_and_deletes_count_their_rows(engine: Engine) -> None:
    ids = _fill(engine)
    bump = Prepared(update(samples).where(samples.c.id == bindparam("row_id")).values(
        count=samples.c.count + 1, status="done", at=bindparam("at")))
    later = AT + timedelta(days=1)
    with engine.begin() as conn:
        assert bump.execute(conn, {"row_id": ids[0], "at": later}).rowcount == 1
        assert bump.execute(conn, {"row_id": 999, "at": later}).rowcount == 0
        assert bump.execute_many(conn, [{"row_id": row_id, "at": later} for row_id in ids]) == 3
        row = conn.execute(select(samples).where(samples.c.id == ids[0])).one()
        assert (row.count, row.status, row.at) == (5, "done", later)
        gone = Prepared(delete(samples).where(samples.c.id.in_(bindparam("ids", expanding=True))))
        assert gone.execute(conn, {"ids": ids[1:]}).rowcount == 2
        assert conn.execute(select(func.count()).select_from(samples)).scalar_one() == 1


def test_inserts_many_and_report_their_keys(engine: Engine) -> None:
    insert = Prepared(samples.insert())
    rows = [{"count": 0, "status": "pending", **row} for row in SAMPLE_ROWS]  # one set of names, as Core needs
    with engine.begin() as conn:
        assert insert.execute_many(conn, rows) == (3 if engine.dialect.name == "sqlite" else -1)  # as psycopg says
        stored = list(conn.execute(select(samples).order_by(samples.c.id)))
        one = insert.execute(conn, {"name": "one", "at": AT})
        if engine.dialect.name == "sqlite":
            assert one.lastrowid == stored[-1].id + 1
    assert [row.name for row in stored] == ["full", "empty", "falsy"]
    assert stored[0].data == SAMPLE_ROWS[0]["data"] and stored[2].flag is False and stored[1].data is None


def test_an_upsert_keeps_its_conflict_clause(engine: Engine) -> None:
    ids = _fill(engine)
    insert = insert_for(engine, samples)
    upsert = Prepared(insert.on_conflict_do_update(index_elements=["id"], set_={"body": insert.excluded.body})
                      .returning(samples.c.id, samples.c.body))
    with engine.begin() as conn:
        row = upsert.first(conn, {"id": ids[0], "name": "full", "body": "again"})
    assert (row.id, row.body) == (ids[0], "again")


def test_runs_inside_the_callers_transaction(engine: Engine) -> None:
    insert = Prepared(samples.insert())
    with engine.connect() as conn:
        insert.execute(conn, {"name": "rolled back"})
        assert conn.in_transaction()
        conn.rollback()
        insert.execute(conn, {"name": "kept"})
        conn.commit()
    with engine.connect() as conn:
        assert list(conn.execute(select(samples.c.name)).scalars()) == ["kept"]


def test_a_default_computed_per_row_falls_back_to_sqlalchemy(engine: Engine) -> None:
    insert = Prepared(stamped.insert())
    before = datetime.now(UTC)
    with engine.begin() as conn:
        insert.execute(conn, {"id": 1})
        insert.execute_many(conn, [{"id": 2}, {"id": 3}])  # rowcount: -1 from Core's insert of many on psycopg
        stamps = list(conn.execute(select(stamped.c.created_at)).scalars())
    assert len(stamps) == 3 and all(stamp >= before for stamp in stamps)


def test_a_naive_datetime_is_refused_as_sqlalchemy_refuses_it(engine: Engine) -> None:
    insert = Prepared(samples.insert())
    with engine.begin() as conn, pytest.raises(ValueError, match="naive datetime"):
        insert.execute(conn, {"name": "naive", "at": datetime(2025, 1, 1)})


def test_cursor_event_listeners_see_its_statements(engine: Engine) -> None:
    seen: list[tuple[str, bool]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement.split()[0], many))

    event.listen(engine, "before_cursor_execute", before)
    try:
        with engine.begin() as conn:
            Prepared(samples.insert()).execute_many(conn, [{"name": "a"}, {"name": "b"}])
            Prepared(select(samples.c.name)).all(conn)
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert seen == [("INSERT", True), ("SELECT", False)]


def test_rows_answer_like_sqlalchemy_rows(engine: Engine) -> None:
    _fill(engine)
    query = select(samples.c.id, samples.c.name).order_by(samples.c.id)
    with engine.connect() as conn:
        expected = conn.execute(query).first()
        got = Prepared(query).first(conn)
    assert got == expected and tuple(got) == tuple(expected)
    assert dict(got._mapping) == dict(expected._mapping) and got.name == expected.name == "full"


def test_driver_errors_are_raised_as_sqlalchemy_raises_them(engine: Engine) -> None:
    ids = _fill(engine)
    insert = Prepared(samples.insert())
    with engine.connect() as conn, conn.begin():
        with pytest.raises(IntegrityError) as raised, conn.begin_nested():  # the same primary key again
            insert.execute(conn, {"id": ids[0], "name": "again", "count": 0, "status": "pending"})
        assert "again" not in str(raised.value) and "parameters hidden" in str(raised.value)  # as the engine says
        with pytest.raises(IntegrityError), conn.begin_nested():
            insert.execute_many(conn, [{"id": ids[0], "name": "again", "count": 0, "status": "pending"}] * 2)
        assert Prepared(select(func.count()).select_from(samples)).scalar(conn) == len(ids)
