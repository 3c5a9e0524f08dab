"""Identity writes in few statements: a new customer is one read and one write on PostgreSQL (the customer and its
identifiers inserted by one statement), and suggestions take the same statements however many are made."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.exc import IntegrityError

from gateway.identity import IdentityRules, resolve_customer
from gateway.identity.merges import suggest_many
from gateway.identity.suggest import suggest_for_new_customer
from gateway.model import Identifier, IdentifierKind, Party
from gateway.storage.tables import customers, identities, merge_suggestions

RULES = IdentityRules(max_per_kind=2)


def email(value: str) -> Identifier:
    return Identifier(kind=IdentifierKind.EMAIL, value=value)


def phone(value: str) -> Identifier:
    return Identifier(kind=IdentifierKind.PHONE, value=value)


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    return migrated_engine


@contextmanager
def counted(conn: Connection) -> Iterator[list[str]]:
    """The statements sent to the database while the block runs (each one is a round trip)."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(conn, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(conn, "before_cursor_execute", note)


def test_a_new_customer_is_one_read_and_one_write_on_postgresql(engine: Engine) -> None:
    sender = Party(identifiers=(email("asha@example.com"), phone("+14155550100")), display_name="Asha Rao")
    with engine.begin() as conn, counted(conn) as sent:
        result = resolve_customer(conn, sender, message_id="m1", rules=RULES)
    assert result.created
    assert len(sent) == (2 if engine.dialect.name == "postgresql" else 3), sent
    with engine.begin() as conn:
        assert conn.execute(select(customers.c.display_name, customers.c.name_key).where(
            customers.c.id == result.customer_id)).one() == ("Asha Rao", "asha rao")
        held = conn.execute(select(identities.c.kind, identities.c.value, identities.c.evidence).where(
            identities.c.customer_id == result.customer_id).order_by(identities.c.id)).all()
    assert [tuple(row) for row in held] == [("email", "asha@example.com", "first_seen"),
                                            ("phone", "+14155550100", "asserted_by_channel")]
    with engine.begin() as conn, counted(conn) as sent:
        again = resolve_customer(conn, sender, message_id="m2", rules=RULES)
    assert (again.customer_id, again.created, len(sent)) == (result.customer_id, False, 1)


def test_suggestions_take_the_same_statements_however_many_are_made(engine: Engine) -> None:
    with engine.begin() as conn:
        earlier = [resolve_customer(conn, Party(identifiers=(email(f"customer{n}@example.org"),),
                                                display_name=f"Customer {n}"), message_id=f"m{n}").customer_id
                   for n in range(11, 15)]
        new = resolve_customer(conn, Party(identifiers=(email("customer1@example.org"),), display_name="Customer 1"),
                               message_id="m1").customer_id
        alone = resolve_customer(conn, Party(identifiers=(email("nobody@example.net"),), display_name="Zed Quill"),
                                 message_id="m2").customer_id
    with engine.begin() as conn, counted(conn) as sent:
        made = suggest_for_new_customer(conn, new, 85)
    assert len(made) == 4 and len(sent) == 3, sent  # candidates with the name, identifiers, insert with ids
    with engine.begin() as conn:
        pairs = {(row.customer_a, row.customer_b): row.id for row in conn.execute(select(merge_suggestions))}
        assert [pairs[tuple(sorted((new, other)))] for other in earlier] == made
        with counted(conn) as sent:
            assert suggest_for_new_customer(conn, alone, 85) == []
        assert len(sent) == 1
        with counted(conn) as sent:
            assert suggest_for_new_customer(conn, new, 85) == made, "a pair is suggested once"
        assert len(sent) == 4, sent  # and the ids of the pairs suggested before are read


@pytest.mark.parametrize("migrated_engine", ["postgresql"], indirect=True)  # SQLite has one writer at a time
def test_a_concurrent_insert_of_the_same_identifier_is_found_on_the_retry(migrated_engine: Engine) -> None:
    """Another worker commits the same address between this one's read and its write: the write fails as a whole
    (no customer without identifiers is left), and the retry finds the other worker's customer."""
    engine = migrated_engine
    sender = Party(identifiers=(email("race@example.com"),), display_name="Race")
    other_customer: list[str] = []

    def other_worker_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "WITH")) and not other_customer:
            with engine.begin() as other:
                other_customer.append(resolve_customer(other, sender, message_id="theirs").customer_id)

    with engine.connect() as conn:
        with conn.begin():
            event.listen(conn, "before_cursor_execute", other_worker_first)
            try:
                with pytest.raises(IntegrityError), conn.begin_nested():
                    resolve_customer(conn, sender, message_id="mine")
            finally:
                event.remove(conn, "before_cursor_execute", other_worker_first)
            result = resolve_customer(conn, sender, message_id="mine")
        assert (result.customer_id, result.created) == (other_customer[0], False)
    with engine.begin() as conn:
        assert conn.execute(select(customers.c.id)).scalars().all() == other_customer


def test_suggestions_of_a_customer_some_made_before_keep_their_ids(engine: Engine) -> None:
    with engine.begin() as conn:
        made = suggest_many(conn, "c0", [("c1", 90.0, "first"), ("c2", 91.0, "second")])
    with engine.begin() as conn:
        again = suggest_many(conn, "c0", [("c3", 92.0, "third"), ("c2", 95.0, "changed"), ("c1", 90.0, "first")])
        rows = {row.id: (row.customer_a, row.customer_b, row.score, row.reason)
                for row in conn.execute(select(merge_suggestions))}
    assert again[1:] == [made[1], made[0]] and again[0] not in made
    assert rows[again[0]] == ("c0", "c3", 92.0, "third")
    assert rows[made[1]] == ("c0", "c2", 91.0, "second"), "a pair suggested before is left as it was"
