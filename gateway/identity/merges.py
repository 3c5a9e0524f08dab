"""Merges (recorded with their evidence, reversible) and merge suggestions."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.storage.db import utcnow
from gateway.storage.prepared import Prepared
from gateway.storage.queues import insert_for
from gateway.storage.tables import crm_links, customers, identities, merge_suggestions, merges

_MAX_CHAIN = 64
_MERGED_INTO_ONE = Prepared(select(customers.c.id).where(customers.c.merged_into == bindparam("id")))
_MERGED_INTO = Prepared(select(customers.c.merged_into).where(customers.c.id == bindparam("id")))
_SUGGESTION_ID = Prepared(select(merge_suggestions.c.id).where(
    merge_suggestions.c.customer_a == bindparam("a"), merge_suggestions.c.customer_b == bindparam("b")))
_SUGGESTIONS_OF = Prepared(select(
    merge_suggestions.c.id, merge_suggestions.c.customer_a, merge_suggestions.c.customer_b).where(
    or_(and_(merge_suggestions.c.customer_a == bindparam("customer_id"),
             merge_suggestions.c.customer_b.in_(bindparam("others", expanding=True))),
        and_(merge_suggestions.c.customer_b == bindparam("customer_id"),
             merge_suggestions.c.customer_a.in_(bindparam("others", expanding=True))))))
_SUGGEST: dict[str, Prepared] = {}  # by dialect name: the conflict clause is the dialect's own


def _suggest_statement(conn: Connection) -> Prepared:
    statement = _SUGGEST.get(conn.engine.dialect.name)
    if statement is None:
        statement = _SUGGEST[conn.engine.dialect.name] = Prepared(insert_for(conn.engine, merge_suggestions)
                                                                  .on_conflict_do_nothing(
                                                                      index_elements=["customer_a", "customer_b"]))
    return statement


class MergeError(Exception):
    pass


def live_customer_id(conn: Connection, customer_id: str) -> str:
    """Follow ``merged_into`` to the customer that stands for this one now."""
    current = customer_id
    for _ in range(_MAX_CHAIN):
        nxt = _MERGED_INTO.scalar(conn, {"id": current})
        if not nxt:
            return current
        current = nxt
    raise MergeError(f"merge chain from {customer_id} is too long")


def customer_family(conn: Connection, customer_id: str) -> list[str]:
    """The customer and every customer merged into it, directly or through others."""
    family, frontier = [customer_id], [customer_id]
    while frontier:
        if len(frontier) == 1:
            frontier = _MERGED_INTO_ONE.scalars(conn, {"id": frontier[0]})
        else:
            frontier = list(conn.execute(select(customers.c.id).where(customers.c.merged_into.in_(frontier))).scalars())
        family += frontier
    return family


def conflicting_links(conn: Connection, a: str, b: str) -> str | None:
    """The name of a CRM in which ``a`` and ``b`` already map to different records, if any."""
    rows = conn.execute(select(crm_links.c.crm, crm_links.c.local_id, crm_links.c.remote_id).where(
        crm_links.c.entity == "customer", crm_links.c.local_id.in_([a, b])))
    seen: dict[str, dict[str, str]] = {}
    for crm, local_id, remote_id in rows:
        seen.setdefault(crm, {})[local_id] = remote_id
    for crm, by_customer in seen.items():
        if len(by_customer) == 2 and by_customer[a] != by_customer[b]:
            return crm
    return None


def merge_customers(conn: Connection, survivor: str, absorbed: str, *, evidence: str, detail: dict[str, Any],
                    message_id: str | None = None, actor: str | None = None) -> int:
    """Move every identifier (and CRM link) of ``absorbed`` to ``survivor``; record what moved so it can be undone."""
    if survivor == absorbed:
        raise MergeError("a customer cannot be merged into itself")
    moved = list(conn.execute(select(identities.c.id).where(identities.c.customer_id == absorbed)).scalars())
    conn.execute(update(identities).where(identities.c.id.in_(moved)).values(customer_id=survivor))
    links = list(conn.execute(select(crm_links.c.crm).where(
        crm_links.c.entity == "customer", crm_links.c.local_id == absorbed)).scalars())
    survivor_links = set(conn.execute(select(crm_links.c.crm).where(
        crm_links.c.entity == "customer", crm_links.c.local_id == survivor)).scalars())
    moved_links = [crm for crm in links if crm not in survivor_links]
    conn.execute(update(crm_links).where(
        crm_links.c.entity == "customer", crm_links.c.local_id == absorbed, crm_links.c.crm.in_(moved_links)
    ).values(local_id=survivor))
    now = utcnow()
    conn.execute(update(customers).where(customers.c.id == absorbed).values(merged_into=survivor, updated_at=now))
    return conn.execute(merges.insert().values(
        survivor_id=survivor, absorbed_id=absorbed, evidence=evidence,
        detail={**detail, "moved_identity_ids": moved, "moved_links": moved_links},
        message_id=message_id, actor=actor, created_at=now)).inserted_primary_key[0]


def unmerge(conn: Connection, merge_id: int, reason: str | None = None) -> dict[str, Any]:
    """Undo one merge: the absorbed customer gets back its identifiers and CRM links."""
    row = conn.execute(select(merges).where(merges.c.id == merge_id)).first()
    if row is None:
        raise MergeError(f"no merge {merge_id}")
    if row.undone_at is not None:
        raise MergeError(f"merge {merge_id} was already undone")
    later = conn.execute(select(merges.c.id).where(
        merges.c.absorbed_id == row.survivor_id, merges.c.undone_at.is_(None), merges.c.id > merge_id)).first()
    if later is not None:
        raise MergeError(f"undo merge {later.id} first: it absorbed this merge's survivor")
    moved = row.detail.get("moved_identity_ids", [])
    conn.execute(update(identities).where(identities.c.id.in_(moved)).values(customer_id=row.absorbed_id))
    moved_links = row.detail.get("moved_links", [])
    conn.execute(update(crm_links).where(
        crm_links.c.entity == "customer", crm_links.c.local_id == row.survivor_id, crm_links.c.crm.in_(moved_links)
    ).values(local_id=row.absorbed_id))
    now = utcnow()
    conn.execute(update(customers).where(customers.c.id == row.absorbed_id).values(merged_into=None, updated_at=now))
    conn.execute(update(merges).where(merges.c.id == merge_id).values(undone_at=now, undo_reason=reason))
    return {"survivor": row.survivor_id, "restored": row.absorbed_id, "identities": len(moved)}


def suggest(conn: Connection, a: str, b: str, score: float, reason: str) -> int:
    """Record (once per pair) that two customers look like one person; nothing is merged."""
    first, second = sorted((a, b))
    _suggest_statement(conn).execute(conn, {
        "customer_a": first, "customer_b": second, "score": round(score, 1), "reason": reason[:1000],
        "status": "open", "created_at": utcnow()})
    return _SUGGESTION_ID.scalars(conn, {"a": first, "b": second})[0]


_SUGGESTION_COLUMNS = ("customer_a", "customer_b", "score", "reason", "status", "created_at")


@cache
def _suggest_rows_statement(dialect: str, count: int) -> Prepared:
    """``count`` suggestions inserted unless already there, returning (id, customer_a, customer_b) of those that
    were new: built once per dialect and count (a customer has at most ``suggest._CANDIDATES`` alike)."""
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    return Prepared(insert(merge_suggestions)
                    .values([{name: bindparam(f"{name}{n}", type_=merge_suggestions.c[name].type)
                              for name in _SUGGESTION_COLUMNS} for n in range(count)])
                    .on_conflict_do_nothing(index_elements=["customer_a", "customer_b"])
                    .returning(merge_suggestions.c.id, merge_suggestions.c.customer_a, merge_suggestions.c.customer_b))


def suggest_many(conn: Connection, customer_id: str, alike: list[tuple[str, float, str]]) -> list[int]:
    """``suggest`` for several (other customer, score, reason) of one customer: one statement for all of them when
    none was suggested before (always so for a new customer), a second to read the ids of those that were.

    Returns the suggestion ids in the order of ``alike``.
    """
    if not alike:
        return []
    now = utcnow()
    params: dict[str, Any] = {}
    for n, (other, score, reason) in enumerate(alike):
        params[f"customer_a{n}"], params[f"customer_b{n}"] = sorted((customer_id, other))
        params[f"score{n}"], params[f"reason{n}"] = round(score, 1), reason[:1000]
        params[f"status{n}"], params[f"created_at{n}"] = "open", now
    others = [other for other, _, _ in alike]
    ids = {(a if b == customer_id else b): suggestion_id for suggestion_id, a, b in
           _suggest_rows_statement(conn.dialect.name, len(alike)).all(conn, params)}
    if len(ids) < len(others):  # suggested before: the conflict clause skipped them, and RETURNING with them
        ids.update({(a if b == customer_id else b): suggestion_id for suggestion_id, a, b in _SUGGESTIONS_OF.all(
            conn, {"customer_id": customer_id, "others": [other for other in others if other not in ids]})})
    return [ids[other] for other in others]


def merges_of(conn: Connection, customer_id: str) -> list[Any]:
    return list(conn.execute(select(merges).where(
        or_(merges.c.survivor_id == customer_id, merges.c.absorbed_id == customer_id)).order_by(merges.c.id)))


def open_suggestions(conn: Connection, include_closed: bool = False) -> list[Any]:
    query = select(merge_suggestions).order_by(merge_suggestions.c.score.desc(), merge_suggestions.c.id)
    if not include_closed:
        query = query.where(and_(merge_suggestions.c.status == "open"))
    return list(conn.execute(query))
