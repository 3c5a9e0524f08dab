"""The durable map of local ids to CRM record ids, one CRM instance at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, select

from gateway.directory import CrmDirectory
from gateway.storage.db import utcnow
from gateway.storage.prepared import Prepared
from gateway.storage.queues import insert_for
from gateway.storage.tables import crm_links

_GET = Prepared(select(crm_links.c.remote_id, crm_links.c.data).where(
    crm_links.c.crm == bindparam("crm"), crm_links.c.entity == bindparam("entity"),
    crm_links.c.local_id == bindparam("local_id")))
_GET_MANY = Prepared(select(crm_links.c.local_id, crm_links.c.remote_id, crm_links.c.data).where(
    crm_links.c.crm == bindparam("crm"), crm_links.c.entity == bindparam("entity"),
    crm_links.c.local_id.in_(bindparam("local_ids", expanding=True))))
IDS_PER_QUERY = 500  # well under SQLite's limit of bound parameters per statement
_PUT: dict[str, Prepared] = {}  # by dialect name


def _put_statement(engine: Engine) -> Prepared:
    statement = _PUT.get(engine.dialect.name)
    if statement is None:
        insert = insert_for(engine, crm_links)
        statement = _PUT[engine.dialect.name] = Prepared(insert.on_conflict_do_update(
            index_elements=["crm", "entity", "local_id"],
            set_={"remote_id": insert.excluded.remote_id, "data": insert.excluded.data,
                  "updated_at": insert.excluded.updated_at}))
    return statement


class DbLinkStore:
    """Local id -> CRM record id for one CRM instance; every write commits at once.

    ``find_records`` answers from the CRM's synced directory: the records that already hold an identifier;
    ``find_local`` maps a CRM record back to the local id linked to it (a ticket to its conversation).
    """

    def __init__(self, engine: Engine, crm: str, directory: CrmDirectory | None = None) -> None:
        self.engine = engine
        self.crm = crm
        self.directory = directory

    def find_records(self, kind: str, value: str) -> list[str]:
        return self.directory.find(kind, value) if self.directory is not None else []

    def find_local(self, entity: str, remote_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(crm_links.c.local_id).where(
                crm_links.c.crm == self.crm, crm_links.c.entity == entity,
                crm_links.c.remote_id == remote_id).order_by(crm_links.c.updated_at.desc()).limit(1)).scalar()

    def get(self, entity: str, local_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.engine.connect() as conn:
            row = _GET.first(conn, {"crm": self.crm, "entity": entity, "local_id": local_id})
        return (row.remote_id, dict(row.data)) if row else None

    def get_many(self, entity: str, local_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        ids = list(dict.fromkeys(local_ids))
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), IDS_PER_QUERY):
                for row in _GET_MANY.all(conn, {"crm": self.crm, "entity": entity,
                                                "local_ids": ids[start:start + IDS_PER_QUERY]}):
                    found[row.local_id] = (row.remote_id, dict(row.data))
        return found

    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None:
        values = {"crm": self.crm, "entity": entity, "local_id": local_id, "remote_id": remote_id,
                  "data": data or {}, "updated_at": utcnow()}
        with self.engine.begin() as conn:
            _put_statement(self.engine).execute(conn, values)

    def put_many(self, entity: str, links: Mapping[str, str]) -> None:
        if not links:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            _put_statement(self.engine).execute_many(conn, [
                {"crm": self.crm, "entity": entity, "local_id": local_id, "remote_id": remote_id, "data": {},
                 "updated_at": now} for local_id, remote_id in links.items()])
