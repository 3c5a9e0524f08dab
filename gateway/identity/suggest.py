"""Likely-duplicate suggestions: similar names plus partial evidence, scored, never applied by themselves."""

from __future__ import annotations

from rapidfuzz import fuzz
from sqlalchemy import Connection, select

from gateway.identity.merges import suggest
from gateway.storage.tables import customers, identities

_CANDIDATES = 50


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
    row = conn.execute(select(customers.c.name_key).where(customers.c.id == customer_id)).first()
    if row is None or not row.name_key:
        return []
    key = row.name_key
    first = key.split(" ")[0]
    candidates = conn.execute(
        select(customers.c.id, customers.c.name_key)
        .where(customers.c.name_key >= first, customers.c.name_key < first + "\uffff",
               customers.c.id != customer_id, customers.c.merged_into.is_(None))
        .limit(_CANDIDATES)).all()
    if not candidates:
        return []

    scored = [(other_id, score) for other_id, other_key in candidates
              if (score := fuzz.token_sort_ratio(key, other_key)) >= min_score]
    if not scored:
        return []
    held: dict[str, list[tuple[str, str]]] = {}  # every identifier of this customer and the alike ones, one query
    for owner, kind, value in conn.execute(
            select(identities.c.customer_id, identities.c.kind, identities.c.value)
            .where(identities.c.customer_id.in_([customer_id, *(other_id for other_id, _ in scored)]))
            .order_by(identities.c.id)):
        held.setdefault(owner, []).append((kind, value))
    mine = held.get(customer_id, [])
    made = []
    for other_id, score in scored:
        evidence = _partial_evidence(mine, held.get(other_id, []))
        if evidence:
            made.append(suggest(conn, customer_id, other_id, score, f"names {score:.0f}% alike; {evidence}"))
    return made
