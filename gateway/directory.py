"""What a CRM already holds: its contacts' identifiers, synced from the CRM.

Two uses: before creating a contact, a connector adopts the existing record that holds the customer's identifier
(instead of writing a duplicate); and a CRM record that holds two identifiers is strong evidence that they belong to
one person, so the gateway customers owning them are merged (or, against the guardrails, a suggestion is made).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, delete, func, select

from gateway.identity.merges import conflicting_links, live_customer_id, merge_customers, suggest
from gateway.identity.normalize import IdentityRules, InvalidIdentifier, normalize_email, normalize_phone
from gateway.model import Identifier, IdentifierKind
from gateway.redact import redact
from gateway.storage.db import utcnow
from gateway.storage.tables import crm_directory, customers, identities

log = logging.getLogger(__name__)


class CrmDirectory:
    """The synced identifiers of one CRM instance's contacts."""

    def __init__(self, engine: Engine, crm: str, rules: IdentityRules) -> None:
        self.engine = engine
        self.crm = crm
        self.rules = rules

    def normalize(self, kind: str, raw: str) -> str | None:
        try:
            if kind == "phone":
                return normalize_phone(raw, self.rules.default_region)
            if kind == "email":
                return normalize_email(raw, self.rules)
        except InvalidIdentifier:
            return None
        return None

    def find(self, kind: str, value: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(crm_directory.c.remote_id).where(
                crm_directory.c.crm == self.crm, crm_directory.c.kind == kind,
                crm_directory.c.value == value)).scalars())

    def replace_record(self, remote_id: str, raw_identifiers: Iterable[tuple[str, str]]) -> None:
        self.replace_records([(remote_id, raw_identifiers)])

    def replace_records(self, records: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> None:
        """Store records' identifiers (normalised), dropping ones they no longer have; then apply them as evidence.

        All records are written before any is applied, so an identifier that several of them hold is seen as shared.
        """
        normalized = [(remote_id, sorted({(kind, value) for kind, raw in raw_identifiers
                                          if (value := self.normalize(kind, raw))}))
                      for remote_id, raw_identifiers in records]
        now = utcnow()
        with self.engine.begin() as conn:
            for remote_id, idents in normalized:
                conn.execute(delete(crm_directory).where(
                    crm_directory.c.crm == self.crm, crm_directory.c.remote_id == remote_id))
                for kind, value in idents:
                    conn.execute(crm_directory.insert().values(
                        crm=self.crm, kind=kind, value=value, remote_id=remote_id, updated_at=now))
            for remote_id, idents in normalized:
                if len(idents) > 1:
                    self._apply_evidence(conn, remote_id, idents)

    def remove_record(self, remote_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(crm_directory).where(
                crm_directory.c.crm == self.crm, crm_directory.c.remote_id == remote_id))

    def _apply_evidence(self, conn: Connection, remote_id: str, idents: list[tuple[str, str]]) -> None:
        owners: dict[str, str] = {}
        for kind, value in idents:
            if self.rules.isolation_reason(Identifier(kind=IdentifierKind(kind), value=value)):
                continue
            holders = conn.execute(select(func.count()).select_from(crm_directory).where(
                crm_directory.c.kind == kind, crm_directory.c.value == value)).scalar_one()
            if holders > 1:
                continue  # several records hold it (a family phone, say): it is evidence for none of them
            owner = conn.execute(select(identities.c.customer_id).where(
                identities.c.kind == kind, identities.c.value == value)).scalar_one_or_none()
            if owner:
                owners.setdefault(live_customer_id(conn, owner), f"{kind}:{value}")
        if len(owners) < 2:
            return
        ordered = sorted(owners, key=lambda cid: conn.execute(
            select(customers.c.created_at).where(customers.c.id == cid)).scalar_one())
        survivor = ordered[0]
        for other in ordered[1:]:
            evidence = f"{self.crm} record {remote_id} holds {owners[survivor]} and {owners[other]}"
            conflict = conflicting_links(conn, survivor, other)
            if conflict:
                suggest(conn, survivor, other, 100.0, f"{evidence}, but they map to different records in {conflict}")
            else:
                merge_customers(conn, survivor, other, evidence="crm_record",
                                detail={"crm": self.crm, "record": remote_id,
                                        "identifiers": [owners[survivor], owners[other]]})
                log.info("merged customer %s into %s: %s", other, survivor, redact(evidence))

