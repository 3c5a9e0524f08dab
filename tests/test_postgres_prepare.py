"""PostgreSQL: the storage URL's ``prepare_threshold`` reaches psycopg, padded IN lists are prepared on the server as
a few statements whatever the batch lengths, and a rollback keeps the connection's prepared statements (and still
undoes the transaction's writes)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, bindparam, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from gateway.storage.db import make_engine, migrate, utcnow
from gateway.storage.prepared import Prepared
from gateway.storage.tables import cursors, inbox

CLAIMED_ROWS = Prepared(select(inbox.c.id).where(inbox.c.id.in_(bindparam("ids", expanding=True))))


def _with_query(url: str, **query: str) -> str:
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def _prepared_on_server(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars())


def _threshold(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return conn.connection.driver_connection.prepare_threshold  # type: ignore[union-attr]


def test_psycopgs_default_threshold_applies_when_the_url_names_none(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        assert _threshold(engine) == 5
    finally:
        engine.dispose()


def test_none_never_prepares_and_a_number_prepares_after_that_many_runs(postgres_url: str) -> None:
    never, soon = (make_engine(_with_query(postgres_url, prepare_threshold=value), pool_size=1)
                   for value in ("None", "1"))
    try:
        migrate(soon)
        assert (_threshold(never), _threshold(soon)) == (None, 1)
        for engine in (never, soon):
            with engine.connect() as conn:
                for _ in range(3):
                    CLAIMED_ROWS.all(conn, {"ids": [1, 2, 3]})
        assert not any("inbox" in statement for statement in _prepared_on_server(never))
        assert sum("inbox" in statement for statement in _prepared_on_server(soon)) == 1
    finally:
        never.dispose()
        soon.dispose()


def test_batches_of_every_length_make_a_few_prepared_statements(postgres_url: str) -> None:
    engine = make_engine(_with_query(postgres_url, prepare_threshold="1"), pool_size=1)
    try:
        migrate(engine)
        with engine.connect() as conn:
            for _ in range(2):
                for length in range(1, 21):
                    CLAIMED_ROWS.all(conn, {"ids": list(range(length))})
        prepared = [statement for statement in _prepared_on_server(engine) if "inbox" in statement]
        assert sorted(statement.count("$") for statement in prepared) == [1, 2, 4, 8, 16, 32]
    finally:
        engine.dispose()


def test_a_rollback_keeps_the_prepared_statements_and_undoes_the_writes(postgres_url: str) -> None:
    engine = make_engine(_with_query(postgres_url, prepare_threshold="1"), pool_size=1)
    try:
        migrate(engine)
        now = utcnow()
        with engine.connect() as conn:  # prepared inside a transaction that ends in a rollback
            for _ in range(2):
                CLAIMED_ROWS.all(conn, {"ids": [1]})
            conn.execute(cursors.insert().values(name="rolled back", value={}, updated_at=now))
            conn.rollback()
            driver = conn.connection.driver_connection
            names = dict(driver._prepared._names)  # type: ignore[union-attr]
            with pytest.raises(DBAPIError), conn.begin():  # an aborted transaction rolls back the same way
                conn.execute(text("SELECT 1 / 0"))
            CLAIMED_ROWS.all(conn, {"ids": [1]})  # runs the statement PostgreSQL kept, by its name
            assert dict(driver._prepared._names) == names and len(names) == 1  # type: ignore[union-attr]
        assert any("inbox" in statement for statement in _prepared_on_server(engine))
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(cursors)).scalar_one() == 0
            conn.rollback()
            later = now + timedelta(seconds=1)
            with conn.begin():
                conn.execute(cursors.insert().values(name="kept", value={}, updated_at=later))
            assert list(conn.execute(select(cursors.c.name)).scalars()) == ["kept"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("value", ["soon", "-1", "2.5"])
def test_a_threshold_that_is_not_a_count_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="prepare_threshold"):
        make_engine(f"postgresql+psycopg://gateway@127.0.0.1/gateway?prepare_threshold={value}")
