"""Likely-duplicate suggestions: similar names plus partial evidence, scored, never applied by themselves."""

from __future__ import annotations

from functools import cache
from typing import Any

from rapidfuzz import fuzz
from sqlalchemy import Connection, String, bindparam, cast, func, literal, literal_column, select

from gateway.identity.merges import suggest_many
from gateway.storage.prepared import Prepared
from gateway.storage.tables import customers, identities

_CANDIDATES = 50
_HELD = Prepared(select(identities.c.customer_id, identities.c.kind, identities.c.value).where(
    identities.c.customer_id.in_(bindparam("customer_ids", expanding=True))).order_by(identities.c.id))


def _unindexed(column: Any) -> Any:
    """The column as an expression no index answers (``column || ''``, NULL where it is NULL): without table
    statistics SQLite would otherwise read every live customer through the ``merged_into`` index rather than the
    customers of the name's range through the ``name_key`` one."""
    return column.concat(literal(""))


@cache
def _candidates_statement(dialect: str) -> Prepared:
    """The new customer's name key and up to ``_CANDIDATES`` live customers whose key starts with its first word.

    One statement: the name key is read in a subquery, and its first word bounds the index range of the others.
    On SQLite the earliest customers of the range are taken (by rowid), which is the order it answered in when it
    read them through the ``merged_into`` index: the same candidates, from the name's range only. There the range
    gives only rowids (from the ``name_key`` index alone), and customers are read in rowid order until
    ``_CANDIDATES`` are live: a crowded range (a common first word) costs a read of its index entries, not a read
    and a sort of every customer in it.
    """
    mine = customers.alias("mine")
    if dialect == "postgresql":
        first = func.split_part(mine.c.name_key, " ", 1)
    else:
        first = func.substr(mine.c.name_key, 1, func.instr(mine.c.name_key + " ", " ") - 1)
    me = select(mine.c.name_key.label("key"), first.label("first")).where(
        mine.c.id == bindparam("customer_id")).subquery("me")
    if dialect == "sqlite":
        ranged = customers.alias("ranged")
        in_range = literal_column("customers.rowid").in_(
            select(literal_column("ranged.rowid")).select_from(ranged).where(
                ranged.c.name_key >= me.c.first, ranged.c.name_key < me.c.first + cast(literal("\uffff"), String)))
        return Prepared(select(customers.c.id, customers.c.name_key, me.c.key)
                        .select_from(me.join(customers, in_range))
                        .where(customers.c.id != bindparam("customer_id"),
                               _unindexed(customers.c.merged_into).is_(None))
                        .order_by(literal_column("customers.rowid")).limit(_CANDIDATES))
    return Prepared(select(customers.c.id, customers.c.name_key, me.c.key)
                    .select_from(me.join(customers, (customers.c.name_key >= me.c.first)
                                         & (customers.c.name_key < me.c.first + cast(literal("\uffff"), String))))
                    .where(customers.c.id != bindparam("customer_id"), _unindexed(customers.c.merged_into).is_(None))
                    .limit(_CANDIDATES))


def _partial_evidence(mine: list[tuple[str, str]], theirs: list[tuple[str, str]]) -> str | None:
    for kind, value in mine:
        for other_kind, other in theirs:
            if kind == other_kind == "phone" and value != other and value[-7:] == other[-7:]:
                return f"phones {value} and {other} share their last 7 digits"
            if kind == other_kind == "email" and value != other:
                local, _, domain = value.rpartition("@")
                other_local, _, other_domain = other.rpartition("@")
                if domain == other_domain and local.split("+")[0].casefold() == other_local.split("+")[0].casefold():
                    return f"emails {value} and {other} differ only by a +tag or case"
                if local.casefold() == other_local.casefold():
                    return f"emails {value} and {other} share their local part"
                if value.rpartition("@")[2] == other.rpartition("@")[2] and fuzz.ratio(local, other_local) >= 90:
                    return f"emails {value} and {other} differ by a character or two"
    return None


def suggest_for_new_customer(conn: Connection, customer_id: str, min_score: float) -> list[int]:
    """Compare a new customer with existing ones of a similar name; record a suggestion where evidence is partial."""
    candidates = _candidates_statement(conn.dialect.name).all(conn, {"customer_id": customer_id})
    if not candidates or not candidates[0].key:
        return []
    key = candidates[0].key
    scored = [(other_id, score) for other_id, other_key, _ in candidates
              if (score := fuzz.token_sort_ratio(key, other_key)) >= min_score]
    if not scored:
        return []
    held: dict[str, list[tuple[str, str]]] = {}  # every identifier of this customer and the alike ones, one query
    for owner, kind, value in _HELD.all(
            conn, {"customer_ids": [customer_id, *(other_id for other_id, _ in scored)]}):
        held.setdefault(owner, []).append((kind, value))
    mine = held.get(customer_id, [])
    alike = []
    for other_id, score in scored:
        evidence = _partial_evidence(mine, held.get(other_id, []))
        if evidence:
            alike.append((other_id, score, f"names {score:.0f}% alike; {evidence}"))
    return suggest_many(conn, customer_id, alike)
