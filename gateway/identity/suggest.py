"""Likely-duplicate suggestions: similar names plus partial evidence, scored, never applied by themselves."""

from __future__ import annotations

from functools import cache
from typing import Any

from rapidfuzz import fuzz, process
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
    ``_CANDIDATES`` are live: a crowded first name (every "Customer ...") costs a read of its range's index entries,
    not a read and a sort of every customer in it.
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


# an address's (local part, domain, local part before any +tag casefolded, local part casefolded)
_Parts = tuple[str, str, str, str]
_Held = tuple[str, str, _Parts | None]  # an identifier's kind and value, with its parts when it is an address


def _held(kind: str, value: str) -> _Held:
    """An identifier with its parts split once, however many customers it is compared with."""
    if kind != "email":
        return kind, value, None
    local, _, domain = value.rpartition("@")
    return kind, value, (local, domain, local.split("+")[0].casefold(), local.casefold())


def _partial_evidence(mine: list[_Held], theirs: list[_Held]) -> str | None:
    """The first pair of the two customers' identifiers that hints they are one person (``mine`` in order, each
    against ``theirs`` in order), said in words; None when no pair does."""
    for kind, value, parts in mine:
        for other_kind, other, other_parts in theirs:
            if kind != other_kind or value == other:
                continue
            if kind == "phone" and value[-7:] == other[-7:]:
                return f"phones {value} and {other} share their last 7 digits"
            if parts is not None and other_parts is not None:
                local, domain, local_base, local_folded = parts
                other_local, other_domain, other_base, other_folded = other_parts
                if domain == other_domain and local_base == other_base:
                    return f"emails {value} and {other} differ only by a +tag or case"
                if local_folded == other_folded:
                    return f"emails {value} and {other} share their local part"
                if domain == other_domain and fuzz.ratio(local, other_local, score_cutoff=90) >= 90:
                    return f"emails {value} and {other} differ by a character or two"
    return None


def suggest_for_new_customer(conn: Connection, customer_id: str, min_score: float) -> list[int]:
    """Compare a new customer with existing ones of a similar name; record a suggestion where evidence is partial."""
    candidates = _candidates_statement(conn.dialect.name).all(conn, {"customer_id": customer_id})
    if not candidates or not candidates[0].key:
        return []
    key = candidates[0].key
    # fuzz.token_sort_ratio of each candidate in one call (the same scores); back in the order of the candidates
    found = process.extract(key, [other_key for _, other_key, _ in candidates], scorer=fuzz.token_sort_ratio,
                            limit=None, score_cutoff=min_score)
    scored = [(candidates[index].id, score) for _, score, index in sorted(found, key=lambda hit: hit[2])]
    if not scored:
        return []
    held: dict[str, list[_Held]] = {}  # every identifier of this customer and the alike ones, one query
    for owner, kind, value in _HELD.all(
            conn, {"customer_ids": [customer_id, *(other_id for other_id, _ in scored)]}):
        held.setdefault(owner, []).append(_held(kind, value))
    mine = held.get(customer_id, [])
    alike = []
    for other_id, score in scored:
        evidence = _partial_evidence(mine, held.get(other_id, []))
        if evidence:
            alike.append((other_id, score, f"names {score:.0f}% alike; {evidence}"))
    return suggest_many(conn, customer_id, alike)
