"""Addresses stored in mixed case before case folding became the default: migration 0010 folds them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select

from gateway.identity import IdentityRules, resolve_customer
from gateway.identity.merges import live_customer_id, unmerge
from gateway.model import Identifier, IdentifierKind, Party
from gateway.storage.db import alembic_config, make_engine, migrate, utcnow
from gateway.storage.tables import crm_directory, crm_links, customers, identities, merge_suggestions, merges


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_folds_stored_addresses_and_joins_what_only_case_told_apart(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    command.upgrade(alembic_config(engine), "0009")
    now = utcnow()
    with engine.begin() as conn:
        for n, cid in enumerate(["old", "young", "linked_a", "linked_b", "alone"]):
            conn.execute(customers.insert().values(id=cid, created_at=now + timedelta(seconds=n), updated_at=now))
        for n, (value, cid) in enumerate([
                ("Asha@example.com", "old"), ("asha@example.com", "young"),      # two customers, one address
                ("Bo@Example.org", "linked_a"), ("bo@example.org", "linked_b"),  # ... kept apart by their CRM records
                ("Cy@example.net", "alone"), ("CY@example.net", "alone")]):     # one customer, two spellings
            conn.execute(identities.insert().values(kind="email", value=value, customer_id=cid, evidence="seen",
                                                    created_at=now + timedelta(seconds=n)))
        for cid, remote in (("linked_a", "1"), ("linked_b", "2")):
            conn.execute(crm_links.insert().values(crm="zd", entity="customer", local_id=cid, remote_id=remote,
                                                   data={}, updated_at=now))
        for value in ("Dee@Example.com", "dee@example.com", "Eve@Example.com"):
            conn.execute(crm_directory.insert().values(crm="zd", kind="email", value=value, remote_id="9",
                                                       updated_at=now))
    migrate(engine)
    with engine.begin() as conn:
        held = {value: cid for value, cid in conn.execute(select(identities.c.value, identities.c.customer_id))}
        assert held == {"asha@example.com": "old", "bo@example.org": "linked_b", "Bo@Example.org": "linked_a",
                        "cy@example.net": "alone"}
        assert live_customer_id(conn, "young") == "old", "the younger customer joins the older"
        merge = conn.execute(select(merges)).one()
        assert (merge.survivor_id, merge.absorbed_id, merge.evidence) == ("old", "young", "email_case_folded")
        suggestion = conn.execute(select(merge_suggestions)).one()
        assert {suggestion.customer_a, suggestion.customer_b} == {"linked_a", "linked_b"}
        assert sorted(conn.execute(select(crm_directory.c.value)).scalars()) == ["dee@example.com", "eve@example.com"]
        # a mixed-case sender now finds the folded identifier
        found = resolve_customer(conn, Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL,
                                                                     value="ASHA@example.com"),)),
                                 message_id="m", rules=IdentityRules())
        assert found.customer_id == "old" and not found.created
        unmerge(conn, merge.id, "test")  # recorded like any merge, so it can be undone
        assert live_customer_id(conn, "young") == "young"
    engine.dispose()
