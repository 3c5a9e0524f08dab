"""Microseconds of CPU per statement: ``conn.execute`` against ``Prepared`` for the delivery stage's statements.

    python -m bench.prepared             # SQLite in a temporary folder
    python -m bench.prepared postgresql  # a fresh database on the local PostgreSQL (GATEWAY_TEST_POSTGRES_URL)

Each round times every statement both ways, alternating, and the medians of the rounds are printed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from bench.throughput_pg import database
from gateway.storage.db import make_engine, migrate, utcnow
from gateway.storage.links import _put_statement
from gateway.storage.prepared import Prepared
from gateway.storage.tables import crm_links, customers, outbox

ROUNDS = 7
CALLS = 500


def main(backend: str) -> None:
    if backend == "postgresql":
        with database() as url:
            run(url)
    else:
        run(f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}")


def run(url: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"id": f"bench{n}", "display_name": "A Person", "created_at": now,
                                           "updated_at": now} for n in range(CALLS)])
    link_get = select(crm_links.c.remote_id, crm_links.c.data).where(
        crm_links.c.crm == bindparam("crm"), crm_links.c.entity == bindparam("entity"),
        crm_links.c.local_id == bindparam("local_id"))
    settle = update(outbox).where(outbox.c.id == bindparam("row_id")).values(
        status="done", lease_owner=None, lease_until=None, last_error=None, delivered_at=bindparam("at"))
    customer = select(customers.c.merged_into, customers.c.display_name, customers.c.created_at).where(
        customers.c.id == bindparam("id"))
    statements: dict[str, tuple[Any, Callable[[int], dict[str, Any]]]] = {
        "link upsert": (_put_statement(engine).statement, lambda n: {
            "crm": "bench", "entity": "message", "local_id": f"m{n}", "remote_id": f"r{n}", "data": {"n": n},
            "updated_at": now}),
        "link get": (link_get, lambda n: {"crm": "bench", "entity": "message", "local_id": f"m{n}"}),
        "customer get": (customer, lambda n: {"id": f"bench{n}"}),
        "outbox settle (no row)": (settle, lambda n: {"row_id": -n, "at": now}),
    }
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(ROUNDS):
        for name, (statement, parameters) in statements.items():
            prepared = Prepared(statement)
            for way, run in (("conn.execute", _core(statement)), ("Prepared", _prepared(prepared))):
                with engine.begin() as conn:
                    started = time.process_time()
                    for n in range(CALLS):
                        run(conn, parameters(n))
                    timings.setdefault((name, way), []).append((time.process_time() - started) / CALLS * 1e6)
    print(f"{engine.dialect.name}: us of CPU per statement, median of {ROUNDS} rounds of {CALLS}")
    for name in statements:
        core = statistics.median(timings[(name, "conn.execute")])
        raw = statistics.median(timings[(name, "Prepared")])
        print(f"  {name:24} conn.execute {core:6.1f}   Prepared {raw:6.1f}   ({core / raw:.1f}x)")
    engine.dispose()


def _core(statement: Any) -> Callable[[Connection, dict[str, Any]], Any]:
    def run(conn: Connection, parameters: dict[str, Any]) -> Any:
        result = conn.execute(statement, parameters)
        return result.all() if result.returns_rows else result.rowcount
    return run


def _prepared(prepared: Prepared) -> Callable[[Connection, dict[str, Any]], Any]:
    def run(conn: Connection, parameters: dict[str, Any]) -> Any:
        return prepared.execute(conn, parameters)
    return run


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite")
