"""CPU per statement of the hot IN-list statements with batch lengths that vary, IN lists padded or not.

    python -m bench.in_lists             # SQLite in a temporary folder
    python -m bench.in_lists postgresql  # a fresh database on the local PostgreSQL (GATEWAY_TEST_POSTGRES_URL)
    python -m bench.in_lists --longest 100  # lists of up to 100 ids (delivery's reads: a batch of conversations)

The statements are the gateway's own (claim read-back and lease, delivery's batch reads, the order keys' lookups),
each run with a list of 1 to 20 ids (``--longest``) drawn at random (the same draws both ways), on one connection in one
transaction per round that is rolled back. Rounds alternate padded and unpadded, each with statements compiled
afresh on a fresh connection (as a worker starts). Prints the medians of the rounds: this process's CPU per
statement and, on PostgreSQL, the CPU of the server process serving the connection.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.throughput_pg import cpu_seconds, database
from gateway.delivery_contexts import _CUSTOMERS, _MESSAGES
from gateway.ordering import _MARK_KEYED, _OLDER_PENDING_KEYS
from gateway.storage.db import make_engine, migrate
from gateway.storage.prepared import Prepared
from gateway.storage.queues import _claim_statements
from gateway.storage.tables import inbox

ROUNDS = 7
CALLS = 400  # per statement and round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backend", nargs="?", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--longest", type=int, default=20, help="longest list (default: the pipeline's batch)")
    args = parser.parse_args()
    if args.backend == "postgresql":
        with database() as url:
            run(url, args.longest)
    else:
        run(f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}", args.longest)


def _statements(pad: bool, skip_locked: bool) -> list[tuple[Prepared, Any]]:
    claim = _claim_statements(inbox, (), skip_locked)

    def ids(n: int) -> list[int]:
        return list(range(1, n + 1))

    def words(n: int) -> list[str]:
        return [f"key{index}" for index in range(n)]

    made = [
        (claim.rows, lambda n: {"ids": ids(n)}),
        (claim.lease, lambda n: {"ids": ids(n), "owner": "bench", "until": None}),
        (_MESSAGES, lambda n: {"ids": words(n)}),
        (_CUSTOMERS, lambda n: {"ids": words(n)}),
        (_MARK_KEYED, lambda n: {"row_ids": ids(n)}),
        (_OLDER_PENDING_KEYS, lambda n: {"keys": words(n), "newest": n, "row_ids": ids(n)}),
    ]
    return [(Prepared(statement.statement, pad_in_lists=pad), parameters) for statement, parameters in made]


def _backend_pid(engine: Engine) -> int | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def run(url: str, longest: int) -> None:
    setup = make_engine(url)
    migrate(setup)
    setup.dispose()
    draws = [random.Random(round_).choices(range(1, longest + 1), k=CALLS) for round_ in range(ROUNDS)]
    timings: dict[tuple[str, bool], list[float]] = {}
    for round_ in range(ROUNDS):
        for pad in (round_ % 2 == 0, round_ % 2 == 1):
            engine = make_engine(url, pool_size=1)
            statements = _statements(pad, engine.dialect.name != "sqlite")
            pid = _backend_pid(engine)
            server = cpu_seconds((), [pid]) if pid else 0.0
            with engine.connect() as conn:
                started = time.process_time()
                for length in draws[round_]:
                    for prepared, parameters in statements:
                        prepared.execute(conn, parameters(length))
                cpu = time.process_time() - started
                conn.rollback()
            server = cpu_seconds((), [pid]) - server if pid else 0.0
            engine.dispose()
            count = CALLS * len(statements)
            timings.setdefault(("client", pad), []).append(cpu / count * 1e6)
            timings.setdefault(("server", pad), []).append(server / count * 1e6)
    print(f"{backend_name(url)}: us of CPU per statement, {len(_statements(True, False))} IN-list statements, "
          f"lengths 1-{longest} at random, median of {ROUNDS} rounds of {CALLS} each")
    for side in ("client", "server") if url.startswith("postgresql") else ("client",):
        unpadded, padded = statistics.median(timings[(side, False)]), statistics.median(timings[(side, True)])
        print(f"  {side:7} unpadded {unpadded:7.1f}   padded {padded:7.1f}   ({padded / unpadded:.2f}x)")


def backend_name(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


if __name__ == "__main__":
    main()
