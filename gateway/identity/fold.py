"""Folding the case of email addresses stored before case folding became the default (migration 0010).

Addresses that differ only by case become one identifier. Where two customers held such variants, the younger is
merged into the older (evidence ``email_case_folded``, recorded and reversible like any merge), unless they map to
different records in a CRM: then a suggestion is recorded and the younger customer's variant is left as it was.
The CRM directory's addresses are folded the same way (the next sync refreshes them anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from gateway.identity.merges import conflicting_links, live_customer_id, merge_customers, suggest
from gateway.identity.normalize import InvalidIdentifier, normalize_email
from gateway.storage.tables import crm_directory, customers, identities


@dataclass
class FoldReport:
    folded: int = 0
    dropped: int = 0
    merges: int = 0
    suggestions: int = 0
    directory: int = 0


def _folded(value: str) -> str:
    try:
        return normalize_email(value)
    except InvalidIdentifier:
        return value


def fold_stored_emails(conn: Connection) -> FoldReport:
    """Fold every stored email identifier and directory address to lower case, joining what only case told apart."""
    report = FoldReport()
    groups: dict[str, list[Any]] = {}
    for row in conn.execute(select(identities.c.id, identities.c.value, identities.c.customer_id)
                            .where(identities.c.kind == "email").order_by(identities.c.id)):
        groups.setdefault(_folded(row.value), []).append(row)
    for folded, rows in groups.items():
        if all(row.value == folded for row in rows):
            continue
        _fold_group(conn, folded, rows, report)
    for row in conn.execute(select(crm_directory).where(crm_directory.c.kind == "email")).all():
        folded = _folded(row.value)
        if folded == row.value:
            continue
        where = (crm_directory.c.crm == row.crm, crm_directory.c.kind == "email",
                 crm_directory.c.remote_id == row.remote_id)
        taken = conn.execute(select(crm_directory.c.value).where(*where, crm_directory.c.value == folded)).first()
        if taken is None:
            conn.execute(update(crm_directory).where(*where, crm_directory.c.value == row.value).values(value=folded))
        else:
            conn.execute(delete(crm_directory).where(*where, crm_directory.c.value == row.value))
        report.directory += 1
    return report


def _fold_group(conn: Connection, folded: str, rows: list[Any], report: FoldReport) -> None:
    owners = list(dict.fromkeys(live_customer_id(conn, row.customer_id) for row in rows))
    created = {cid: conn.execute(select(customers.c.created_at).where(customers.c.id == cid)).scalar_one()
               for cid in owners}
    survivor = min(owners, key=lambda cid: (created[cid], cid))
    joined = {survivor}
    for other in owners:
        if other == survivor:
            continue
        detail = {"identifiers": [f"email:{folded}"], "note": "addresses that differ only by case"}
        if conflicting_links(conn, survivor, other):
            suggest(conn, survivor, other, 100.0, f"email:{folded} in two cases, but they map to different CRM records")
            report.suggestions += 1
            continue
        merge_customers(conn, survivor, other, evidence="email_case_folded", detail=detail)
        joined.add(other)
        report.merges += 1
    mine = [row for row in rows if live_customer_id(conn, row.customer_id) in joined]
    if any(row.value == folded for row in rows if row not in mine):
        return  # a customer kept apart holds the folded form: these variants stay as they are
    keep = next((row for row in mine if row.value == folded), mine[0])
    extra = [row.id for row in mine if row.id != keep.id]
    if extra:
        conn.execute(delete(identities).where(identities.c.id.in_(extra)))
        report.dropped += len(extra)
    if keep.value != folded:
        conn.execute(update(identities).where(identities.c.id == keep.id).values(value=folded))
        report.folded += 1
