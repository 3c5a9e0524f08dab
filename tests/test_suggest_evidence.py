"""Which partial evidence a suggestion names: the first pair of identifiers that hints at one person, the new
customer's identifiers taken in order; suggestions come in the order of the candidates, scored by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rapidfuzz import fuzz
from sqlalchemy import Engine, select

from gateway.identity import resolve_customer
from gateway.identity.suggest import _candidates_statement, suggest_for_new_customer
from gateway.model import Identifier, IdentifierKind, Party
from gateway.storage.db import make_engine, migrate
from gateway.storage.tables import customers, merge_suggestions


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/g.db")
    migrate(engine)
    yield engine
    engine.dispose()


def party(name: str, *identifiers: tuple[IdentifierKind, str]) -> Party:
    return Party(identifiers=tuple(Identifier(kind=kind, value=value) for kind, value in identifiers),
                 display_name=name)


EMAIL, PHONE = IdentifierKind.EMAIL, IdentifierKind.PHONE


def test_each_kind_of_evidence_is_named_and_the_new_customers_first_identifier_decides(engine: Engine) -> None:
    earlier = [
        ("Asha Rao", (EMAIL, "asha.rao+shop@example.com")),
        ("Asha Rao", (EMAIL, "asha.rao@other.org")),
        ("Asha  Rao", (EMAIL, "asha.rao1@example.com")),
        ("Rao Asha", (PHONE, "+14155550100")),
        ("Asha Rao", (EMAIL, "zed@nowhere.net")),
        ("Asha Raoul", (PHONE, "+14085550100"), (EMAIL, "asha.rao@mail.net")),
        ("Bob Stone", (EMAIL, "asha.rao@bob.net")),
    ]
    with engine.begin() as conn:
        ids = [resolve_customer(conn, party(name, *held), message_id=f"m{n}").customer_id
               for n, (name, *held) in enumerate(earlier)]
        new = resolve_customer(conn, party("Asha Rao", (EMAIL, "asha.rao@example.com"), (PHONE, "+16505550100")),
                               message_id="m-new").customer_id
        made = suggest_for_new_customer(conn, new, 85)
        rows = conn.execute(select(merge_suggestions.c.id, merge_suggestions.c.customer_a,
                                   merge_suggestions.c.customer_b, merge_suggestions.c.score,
                                   merge_suggestions.c.reason).order_by(merge_suggestions.c.id)).all()
    assert made == [row.id for row in rows]
    assert [({row.customer_a, row.customer_b} - {new}).pop() for row in rows] == [ids[0], ids[1], ids[2], ids[3],
                                                                                   ids[5]]
    assert [row.reason.split("; ", 1)[1] for row in rows] == [
        "emails asha.rao@example.com and asha.rao+shop@example.com differ only by a +tag or case",
        "emails asha.rao@example.com and asha.rao@other.org share their local part",
        "emails asha.rao@example.com and asha.rao1@example.com differ by a character or two",
        "phones +16505550100 and +14155550100 share their last 7 digits",
        "emails asha.rao@example.com and asha.rao@mail.net share their local part",
    ]
    names = [earlier[n][0] for n in (0, 1, 2, 3, 5)]
    assert [row.score for row in rows] == [round(fuzz.token_sort_ratio("asha rao", " ".join(name.lower().split())), 1)
                                           for name in names]
    assert all(row.reason.startswith(f"names {row.score:.0f}% alike; ") for row in rows)


def test_the_candidates_are_the_earliest_live_customers_of_the_first_words_range(engine: Engine) -> None:
    with engine.begin() as conn:
        names = ["Ashanti Cole", "Ash Brook", "Bob Ash", *(f"Asha R{n:02d}" for n in range(70))]
        ids = [resolve_customer(conn, party(name, (EMAIL, f"c{n}@example.org")), message_id=f"m{n}").customer_id
               for n, name in enumerate(names)]
        merged = ids[3:8]  # five of the earliest, merged into a later one: no longer live
        conn.execute(customers.update().where(customers.c.id.in_(merged)).values(merged_into=ids[-1]))
        new = resolve_customer(conn, party("Asha Rao", (EMAIL, "c999@example.org")), message_id="m-new").customer_id
        rows = _candidates_statement("sqlite").all(conn, {"customer_id": new})
    # name keys have their words sorted: "ashanti cole" is in the range of "asha", "ash brook" and "ash bob" are not
    assert [row.id for row in rows] == [ids[0], *ids[8:57]]
    assert {row.key for row in rows} == {"asha rao"}
