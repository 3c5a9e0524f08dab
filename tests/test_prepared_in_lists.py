"""``Prepared`` pads IN lists to a few lengths: the rows are those of the unpadded statement, for every length, and
the statement's text takes only the fixed set of shapes, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, bindparam, event, or_, select

from gateway.storage.db import make_engine
from gateway.storage.prepared import PADDED_IN_LIST_MAX, Prepared, padded_length

metadata = MetaData()
items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(32)),  # every fifth row has none: NULLs in and against IN lists
)
ROWS = [{"id": n, "name": None if n % 5 == 0 else f"item{n % 7}"} for n in range(1, 61)]
LONGEST = 40  # lengths 1..LONGEST cross the paddings 1, 2, 4, ..., 64

BY_ID = select(items.c.id).where(items.c.id.in_(bindparam("ids", expanding=True))).order_by(items.c.id)
# two lists, one of them under NOT IN, and a plain parameter between them
BY_NAME = (select(items.c.id)
           .where(items.c.name.in_(bindparam("names", expanding=True)), items.c.id > bindparam("above"),
                  items.c.id.not_in(bindparam("excluded", expanding=True)))
           .order_by(items.c.id))
# the same list twice, as the merge suggestions' query has it
EITHER_SIDE = (select(items.c.id)
               .where(or_(items.c.id.in_(bindparam("ids", expanding=True)),
                          (items.c.id + 100).in_(bindparam("ids", expanding=True))), items.c.id < bindparam("below"))
               .order_by(items.c.id))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'in_lists.db'}" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), ROWS)
    yield engine
    engine.dispose()


class _Texts:
    """The statement texts and parameter counts the engine's cursors run, as the cursor events see them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seen: list[tuple[str, int]] = []

    def __enter__(self) -> _Texts:
        event.listen(self.engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *_: Any) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)

    def _before(self, _conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, _many: bool) -> None:
        self.seen.append((sql, len(parameters)))


def _marks(sql: str) -> int:
    return len(re.findall(r"\?|%\(\w+\)s", sql))


def test_padded_lengths_are_powers_of_two_up_to_the_maximum() -> None:
    assert [padded_length(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]
    assert padded_length(PADDED_IN_LIST_MAX) == PADDED_IN_LIST_MAX == 256
    assert padded_length(PADDED_IN_LIST_MAX - 1) == PADDED_IN_LIST_MAX
    assert padded_length(PADDED_IN_LIST_MAX + 1) == PADDED_IN_LIST_MAX + 1  # a longer list keeps its length


def test_every_length_gives_the_rows_of_the_unpadded_statement(engine: Engine) -> None:
    padded, unpadded = Prepared(BY_ID), Prepared(BY_ID, pad_in_lists=False)
    with engine.connect() as conn:
        for length in range(1, LONGEST + 1):
            chosen = [row["id"] for row in ROWS[length - 1::-1][:length]]  # newest first: the last value is 1
            chosen[length // 2] = 999  # one value matches no row
            expected = list(conn.execute(BY_ID, {"ids": chosen}).scalars())
            assert padded.scalars(conn, {"ids": chosen}) == expected == unpadded.scalars(conn, {"ids": chosen})
            assert len(expected) == length - 1 and 999 not in expected


def test_not_in_and_nulls_give_the_rows_of_the_unpadded_statement(engine: Engine) -> None:
    padded, unpadded = Prepared(BY_NAME), Prepared(BY_NAME, pad_in_lists=False)
    names = [f"item{n}" for n in range(7)]
    with engine.connect() as conn:
        for length in range(1, 12):
            parameters = {"names": names[:min(length, 7)], "above": 3, "excluded": list(range(length, 0, -2))}
            expected = list(conn.execute(BY_NAME, parameters).scalars())
            assert padded.scalars(conn, parameters) == expected == unpadded.scalars(conn, parameters)
            assert expected and not set(expected) & set(parameters["excluded"])
        with_null = {"names": ["item1", None], "above": 0, "excluded": [1, None]}  # NOT IN with a NULL: no row
        assert padded.scalars(conn, with_null) == list(conn.execute(BY_NAME, with_null).scalars()) == []
        null_last = {"names": ["item1", None], "above": 0, "excluded": [None, 1]}  # padded by repeating the NULL
        assert padded.scalars(conn, null_last) == list(conn.execute(BY_NAME, null_last).scalars()) == []


def test_a_list_used_twice_is_padded_alike_in_both_places(engine: Engine) -> None:
    padded = Prepared(EITHER_SIDE)
    with engine.connect() as conn:
        for length in range(1, 12):
            parameters = {"ids": [3 * n for n in range(1, length)] + [105], "below": 50}
            expected = list(conn.execute(EITHER_SIDE, parameters).scalars())
            assert padded.scalars(conn, parameters) == expected and 5 in expected


def test_the_text_takes_one_shape_per_padded_length(engine: Engine) -> None:
    padded = Prepared(BY_ID)
    with engine.connect() as conn, _Texts(engine) as texts:
        for length in range(1, LONGEST + 1):
            padded.all(conn, {"ids": list(range(1, length + 1))})
    assert len(texts.seen) == LONGEST
    assert sorted({_marks(sql) for sql, _ in texts.seen}) == [1, 2, 4, 8, 16, 32, 64]
    assert len({sql for sql, _ in texts.seen}) == 7
    assert all(count == _marks(sql) for sql, count in texts.seen)  # a value for every mark


def test_unpadded_statements_take_one_text_per_length_and_long_lists_keep_theirs(engine: Engine) -> None:
    longest = PADDED_IN_LIST_MAX + 3
    with engine.connect() as conn, _Texts(engine) as texts:
        for length in range(1, 11):
            Prepared(BY_ID, pad_in_lists=False).all(conn, {"ids": list(range(1, length + 1))})
        assert len(Prepared(BY_ID).all(conn, {"ids": list(range(1, longest + 1))})) == len(ROWS)
    assert [_marks(sql) for sql, _ in texts.seen] == [*range(1, 11), longest]


def test_the_callers_list_is_left_as_it_was(engine: Engine) -> None:
    chosen = [3, 1, 2]
    with engine.connect() as conn:
        assert Prepared(BY_ID).scalars(conn, {"ids": chosen}) == [1, 2, 3]
    assert chosen == [3, 1, 2]
