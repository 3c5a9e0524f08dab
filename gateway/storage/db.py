"""Engine creation (SQLite in WAL mode or PostgreSQL) and schema migrations."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.pq import ExecStatus, TransactionStatus
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url

from gateway.storage.tables import cursors

log = logging.getLogger(__name__)
_SQLITE_SYNCHRONOUS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()  # by make_engine
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_MIGRATION_LOCK = 0x6761746577  # advisory lock key: "gatew"
READY_ROW = "gateway:readyz"  # the cursors row /readyz writes


def utcnow() -> datetime:
    return datetime.now(UTC)


def dumps_json(value: Any) -> str:
    """A JSON column's text, written by orjson: the pipeline writes every message and its mapped fields as JSON.

    Keys that are not strings become strings, as ``json.dumps`` makes them; what orjson refuses (a string with a
    lone surrogate, as undecodable mail bytes become, an integer over 64 bits) is written by ``json.dumps``."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def loads_json(text: str | bytes) -> Any:
    """A JSON column's value; text orjson refuses (``NaN``, an escaped lone surrogate) is read by ``json.loads``."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def bookkeeping(engine: Engine) -> Iterator[Connection]:
    """A transaction whose loss in a power cut only repeats work: a claim, a lease, a row's order keys.

    On SQLite it commits without an fsync of its own (``synchronous=NORMAL`` for it alone): the next commit that
    does fsync the log, such as the batch stored after a claim, makes it durable too, and a crash of the process
    alone loses nothing. Every message otherwise took three fsyncs in the pipeline, and at a steady trickle of
    webhooks the fsyncs of the web process, the pipeline and delivery queued behind each other. PostgreSQL: a
    transaction like any other.
    """
    level = _SQLITE_SYNCHRONOUS.get(engine)
    if level is None or level == "NORMAL" or level == "OFF":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        driver.execute("PRAGMA synchronous=NORMAL")  # only outside a transaction, as SQLite requires
        try:
            with conn.begin():
                yield conn
        finally:
            try:
                driver.execute(f"PRAGMA synchronous={level}")
            except Exception:
                conn.invalidate()  # never back in the pool with fewer fsyncs than configured
                raise


def make_engine(url: str, *, sqlite_synchronous: str = "full", pool_size: int = 5) -> Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and the chosen fsync level on every connection.

    On PostgreSQL with psycopg, ``?prepare_threshold=N`` in the URL sets after how many executions on a connection
    a statement is prepared on the server (psycopg's default, 5, when absent); ``?prepare_threshold=none`` never
    prepares, for a pooler in transaction mode that does not carry prepared statements across its server
    connections (PgBouncer before 1.21, or without ``max_prepared_statements``).

    A database error does not quote the statement's parameters (customers' numbers, addresses, messages).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True,
                               json_serializer=dumps_json, json_deserializer=loads_json)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so transactions take the write lock predictably.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        _SQLITE_SYNCHRONOUS[engine] = sqlite_synchronous.upper()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # Writers queue on the busy timeout instead of failing on a lock upgrade mid-transaction. Issued on
            # the driver's connection: it runs for every transaction, and SQLAlchemy's execution path costs more.
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE")

        return engine
    parsed, connect_args = _psycopg_connect_args(parsed)
    engine = create_engine(parsed, connect_args=connect_args, pool_size=pool_size, max_overflow=pool_size,
                           pool_pre_ping=True, hide_parameters=True, json_serializer=dumps_json,
                           json_deserializer=loads_json)
    if parsed.get_driver_name() == "psycopg":
        engine.dialect.do_rollback = _rollback_keeping_prepared  # type: ignore[method-assign]
    return engine


def _rollback_keeping_prepared(dbapi_connection: Any) -> None:
    """Roll back without forgetting the connection's prepared statements.

    psycopg's ``rollback()`` follows every ROLLBACK of an open transaction with DEALLOCATE ALL and starts counting
    executions again, in case the transaction changed the schema. Every ``engine.connect()`` block that only read
    ends with a rollback, so a worker re-prepared its statements every few batches and ran most of them unprepared.
    The gateway changes the schema only in migrations, and psycopg still forgets its statements on a DROP or ALTER
    it runs; PostgreSQL keeps a statement prepared inside a transaction that is rolled back. So an open transaction
    is rolled back here with libpq's own call, which leaves psycopg's statements alone; anything else (no
    transaction, a query still running, a broken connection, a failed ROLLBACK) goes through psycopg.
    """
    connection = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    pgconn = connection.pgconn
    in_transaction = pgconn.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)
    if in_transaction and pgconn.exec_(b"ROLLBACK").status == ExecStatus.COMMAND_OK:
        return
    connection.rollback()


def _psycopg_connect_args(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL without ``prepare_threshold`` and the value psycopg's ``connect`` takes for it (an int or None): left
    in the query, it would reach psycopg as a string."""
    if url.get_driver_name() != "psycopg" or "prepare_threshold" not in url.query:
        return url, {}
    given = url.query["prepare_threshold"]
    value = given[-1] if isinstance(given, tuple) else given
    if value.strip().lower() == "none":
        threshold = None
    else:
        try:
            threshold = int(value)
        except ValueError:
            raise ValueError(f"prepare_threshold in the storage URL must be a whole number or none, not {value!r}") \
                from None
        if threshold < 0:
            raise ValueError(f"prepare_threshold in the storage URL must not be negative, not {threshold}")
    return url.difference_update_query(["prepare_threshold"]), {"prepare_threshold": threshold}


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


@contextmanager
def _migration_lock(engine: Engine):  # type: ignore[no-untyped-def]
    """One process migrates at a time: an advisory lock on PostgreSQL, a lock file beside a SQLite file."""
    if is_sqlite(engine):
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
            conn.commit()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration; Alembic's lines are logged only when a migration runs."""
    config = alembic_config(engine)
    with _migration_lock(engine):
        if _pending(engine, config):
            command.upgrade(config, "head")


def _pending(engine: Engine, config: AlembicConfig) -> bool:
    """Whether the database is behind the newest migration (asked without Alembic's INFO lines)."""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        alembic_log.setLevel(level)
    return current != set(ScriptDirectory.from_config(config).get_heads())


class NotReady(Exception):
    """Storage cannot take a webhook's row now; the message is the line ``/readyz`` answers with."""


def check_ready(engine: Engine, min_free_bytes: int = 0) -> None:
    """Raise ``NotReady`` unless a write can commit now.

    Only a commit proves that: SQLite writes nothing to disk before it (a write rolled back never touches the file,
    so a read-only file or a failed fsync go unseen), and PostgreSQL refuses writes of a read-only database or
    standby only once one is attempted. So a heartbeat row in ``cursors`` is updated and committed on every call.
    A commit is not proof of room, though: SQLite reuses the space of its write-ahead log, so a small commit can
    succeed on a full disk while the next webhook's cannot. Beside a SQLite file, ``min_free_bytes`` must be free.
    """
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM inbox WHERE 1=0"))
    except Exception as exc:
        raise NotReady("storage unreachable") from exc
    database = engine.url.database if is_sqlite(engine) else None
    if min_free_bytes and database and database != ":memory:" and not database.startswith("file:"):
        free = shutil.disk_usage(Path(database).resolve().parent).free
        if free < min_free_bytes:
            raise NotReady(f"disk full: {free // 2**10} KiB free beside the database, "
                           f"{min_free_bytes // 2**10} KiB needed")
    now = utcnow()
    values = {"name": READY_ROW, "value": {"checked_at": now.isoformat()}, "updated_at": now}
    statement = (sqlite_insert if is_sqlite(engine) else postgresql_insert)(cursors).values(values)
    statement = statement.on_conflict_do_update(index_elements=["name"], set_=values)
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    except Exception as exc:
        raise NotReady("storage cannot commit a write") from exc
