"""The durable queues: inbox (raw requests), outbox (CRM writes) and dead letters.

Workers claim rows with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's single writer does the same):
a crashed worker's claim expires and another worker repeats the work, which the idempotency keys make harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    FromClause,
    Integer,
    Row,
    String,
    Table,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from gateway.records import InboxItem
from gateway.redact import redact
from gateway.storage.db import bookkeeping, is_sqlite, utcnow
from gateway.storage.liveness import Liveness
from gateway.storage.prepared import Prepared
from gateway.storage.tables import PENDING_LITERAL, crm_notes, dead_letters, inbox, outbox, sends

log = logging.getLogger(__name__)
# what a dead letter's stage names: the queue its source row lives in
STAGE_TABLES: dict[str, Table] = {"pipeline": inbox, "delivery": outbox, "send": sends, "note": crm_notes}
GONE_SWEEP_SECONDS = 2.0  # how often a claim looks for rows held by workers that are gone


@dataclass(frozen=True)
class StoredCount:
    stored: int
    duplicates: int


@dataclass(frozen=True)
class InboxWrite:
    """One webhook request's items, to be stored together."""

    connector: str
    items: Sequence[InboxItem]
    headers: dict[str, str]
    public_url: str
    received_at: datetime | None = None


_INBOX_COLUMNS = ("connector", "provider_id", "kind", "content_type", "headers", "body", "public_url",
                  "received_at", "available_at", "status", "attempts")


class _PreparedInsert:
    """One INSERT compiled once and run on the DBAPI cursor of a SQLAlchemy transaction.

    Webhook ingest runs it for every request while holding SQLite's write lock; SQLAlchemy's per-execution work
    (cache key, parameter processing, result wrapping) costs more than the insert itself there. The SQL and the
    column types' own bind processors still come from SQLAlchemy, so values are stored exactly as Core stores them.
    """

    def __init__(self, engine: Engine, statement: Any) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names: list[str] = list(compiled.positiontup or ()) if compiled.positional else []
        dialect = engine.dialect
        self.processors = {name: processor for name, bind in compiled.binds.items()
                           if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}

    def parameters(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        for name, processor in self.processors.items():
            values[name] = processor(values[name])
        return [values[name] for name in self.names] if self.positional else values

    def run(self, cursor: Any, parameters: Sequence[Any] | dict[str, Any]) -> list[Any]:
        cursor.execute(self.sql, parameters)
        return list(cursor.fetchall())


def _pending(table: FromClause) -> ColumnElement[bool]:
    """``status = 'pending'`` with the value written into the SQL, as the partial indexes of pending rows state it
    (``pending_index``): PostgreSQL's generic plan of a prepared statement, and SQLite, use such an index only when
    the query's condition is that literal, never a bound parameter."""
    return table.c.status == literal_column(PENDING_LITERAL, String)


def _oldest_pending(table: Table) -> ColumnElement[bool]:
    """The (pending) row is the oldest pending one of its conversation (of its CRM, for the outbox).

    Written as a comparison with the conversation's lowest pending id, not as ``NOT EXISTS`` an older one: the
    planner turns ``NOT EXISTS`` into an anti-join, and without statistics on the status (a table filled since the
    last ANALYZE) it chose one that reads every pending row for every candidate. A scalar subquery stays a probe per
    candidate, and ``min`` reads one entry of the pending rows' (conversation, id) index.
    """
    earlier = table.alias("earlier")
    same = [earlier.c.crm == table.c.crm] if table is outbox else []
    return table.c.id == select(func.min(earlier.c.id)).where(
        *same, earlier.c.conversation_id == table.c.conversation_id, _pending(earlier)).scalar_subquery()


_OUTBOX_HEAD = _oldest_pending(outbox)
_OUTBOX_OF_CRMS = outbox.c.crm.in_(bindparam("crms", expanding=True))
_SENDS_HEAD = _oldest_pending(sends)


class _ClaimStatements:
    """A queue's claim, built once: the due candidates, their lease, and the claimed rows read back."""

    def __init__(self, table: Table, conditions: Sequence[ColumnElement[bool]], skip_locked: bool) -> None:
        now = bindparam("now", type_=table.c.available_at.type)
        candidates = (
            select(table.c.id, table.c.attempts)
            .where(_pending(table), table.c.available_at <= now,
                   or_(table.c.lease_until.is_(None), table.c.lease_until < now), *conditions)
            .order_by(table.c.id)
            .limit(bindparam("limit", type_=Integer()))
        )
        if skip_locked:
            candidates = candidates.with_for_update(skip_locked=True, of=table)
        # the candidates are read from the index of pending rows in id order, never sorted: SQLite is told to (it
        # would rather read every pending row through another index and sort them), PostgreSQL is not let sort
        # (see _claim). Either way a claim costs what it returns, not the backlog.
        pending = f"ix_{table.name}_pending"
        has_pending = any(index.name == pending for index in table.indexes)
        self.candidates = Prepared(candidates, sqlite_index=(table.name, pending) if has_pending else None)
        self.unsorted = skip_locked and has_pending
        self.lease = Prepared(update(table).where(table.c.id.in_(bindparam("ids", expanding=True))).values(
            lease_owner=bindparam("owner"), lease_until=bindparam("until"), attempts=table.c.attempts + 1))
        self.rows = Prepared(select(table).where(table.c.id.in_(bindparam("ids", expanding=True))).order_by(table.c.id))


_CLAIMS: dict[tuple[str, tuple[int, ...], bool], _ClaimStatements] = {}


def _claim_statements(table: Table, conditions: Sequence[ColumnElement[bool]], skip_locked: bool) -> _ClaimStatements:
    key = (table.name, tuple(id(condition) for condition in conditions), skip_locked)  # conditions: module constants
    statements = _CLAIMS.get(key)
    if statements is None:
        statements = _CLAIMS[key] = _ClaimStatements(table, conditions, skip_locked)
    return statements


_FOLLOWERS_QUERY = select(outbox.c.id, outbox.c.crm, outbox.c.conversation_id, outbox.c.available_at,
                          outbox.c.lease_until).where(
    outbox.c.status == "pending", outbox.c.conversation_id.in_(bindparam("conversations", expanding=True)),
    outbox.c.id.not_in(bindparam("heads", expanding=True))).order_by(outbox.c.conversation_id, outbox.c.id)
_FOLLOWERS = Prepared(_FOLLOWERS_QUERY)
_FOLLOWERS_LOCKED = Prepared(_FOLLOWERS_QUERY.with_for_update())  # wait, never skip: a skipped row would be overtaken


def insert_for(engine: Engine, table: Table) -> Any:
    return (sqlite.insert if is_sqlite(engine) else postgresql.insert)(table)


class LeaseLost(Exception):
    """The row is no longer this worker's to settle: another took it over, or it was settled meanwhile."""


class Queues:
    """Inbox, outbox and dead-letter operations over one engine."""

    def __init__(self, engine: Engine, liveness: Liveness | None = None) -> None:
        self.engine = engine
        self.liveness = liveness  # set in worker processes: rows of a worker that is gone are taken over at once
        self._next_sweep: dict[str, float] = {}
        self._skip_locked = not is_sqlite(engine)
        self._inbox_insert = _PreparedInsert(engine, (
            insert_for(engine, inbox)
            .values({name: bindparam(name) for name in _INBOX_COLUMNS})
            .on_conflict_do_nothing(index_elements=["connector", "provider_id"])
            .returning(inbox.c.id)))

    # -- inbox -------------------------------------------------------------------------------------------------
    def store_inbox(self, connector: str, items: Sequence[InboxItem], headers: dict[str, str],
                    public_url: str, received_at: datetime | None = None) -> StoredCount:
        """Store items; a provider id already stored for this connector is a duplicate, kept once."""
        return self.store_inbox_batch([InboxWrite(connector, items, headers, public_url, received_at)])[0]

    def store_inbox_batch(self, writes: Sequence[InboxWrite]) -> list[StoredCount]:
        """Several requests' items in one transaction: one commit (one fsync) for all of them."""
        batches = []
        for write in writes:
            now = write.received_at or utcnow()
            batches.append([self._inbox_insert.parameters({
                "connector": write.connector, "provider_id": item.provider_id.replace("\x00", "")[:255],
                "kind": item.kind, "content_type": item.content_type, "headers": write.headers, "body": item.body,
                "public_url": write.public_url, "received_at": now, "available_at": now, "status": "pending",
                "attempts": 0}) for item in write.items])
        counts = []
        with self.engine.begin() as conn:  # parameters are ready: the write lock is held for the inserts only
            cursor = conn.connection.cursor()
            try:
                for write, rows in zip(writes, batches, strict=True):
                    # RETURNING, not rowcount: psycopg reports -1 as the rowcount of this insert
                    stored = sum(len(self._inbox_insert.run(cursor, row)) for row in rows)
                    counts.append(StoredCount(stored, len(write.items) - stored))
            finally:
                cursor.close()
        return counts

    def claim_inbox(self, owner: str, limit: int, lease_seconds: int) -> list[Row[Any]]:
        """Claim due inbox rows, oldest first: those never tried, and at most one tried before.

        A row tried before is claimed alone, so that a row which stops its worker each time (a crash, a processing
        deadline) is the only one tried again and again, never the rows that happened to share its batch.
        """
        return self._claim(inbox, owner, limit, lease_seconds, (), one_retried=True)

    # -- outbox ------------------------------------------------------------------------------------------------
    def claim_outbox(self, owner: str, limit: int, lease_seconds: int,
                     crms: Sequence[str] | None = None, per_conversation: int = 1) -> list[list[Row[Any]]]:
        """Claim due outbox rows as groups, one group per (crm, conversation), oldest first, so writes keep order.

        A group starts with the conversation's oldest pending row and holds up to ``per_conversation`` rows that
        follow it; the rows behind a claimed head cannot be claimed by anyone else.
        """
        conditions = [_OUTBOX_HEAD] if crms is None else [_OUTBOX_HEAD, _OUTBOX_OF_CRMS]
        heads = self._claim(outbox, owner, limit, lease_seconds, conditions,
                            {} if crms is None else {"crms": list(crms)})
        groups = [[head] for head in heads]
        if per_conversation > 1 and heads:
            groups = self._claim_followers(heads, owner, per_conversation, lease_seconds)
        return groups

    def claim_sends(self, owner: str, limit: int, lease_seconds: int) -> list[Row[Any]]:
        """Claim due sends, each the oldest pending one of its conversation, so replies go out in order."""
        return self._claim(sends, owner, limit, lease_seconds, [_SENDS_HEAD])

    def claim_notes(self, owner: str, limit: int, lease_seconds: int) -> list[Row[Any]]:
        return self._claim(crm_notes, owner, limit, lease_seconds, ())

    def _claim_followers(self, heads: list[Row[Any]], owner: str, per_conversation: int,
                         lease_seconds: int) -> list[list[Row[Any]]]:
        """The rows right behind each claimed head, in order, stopping at the first that cannot be claimed now.

        Stopping matters: a row still leased (a crashed worker's lease that outlives its head's by a moment) or
        waiting out a retry must not be overtaken by the rows behind it.
        """
        now = utcnow()
        by_key = {(head.crm, head.conversation_id): [head] for head in heads}
        query = _FOLLOWERS_LOCKED if self._skip_locked else _FOLLOWERS
        with bookkeeping(self.engine) as conn:
            counts = dict.fromkeys(by_key, 1)
            open_keys = set(by_key)
            ids = []
            followers = query.all(conn, {"conversations": list(dict.fromkeys(h.conversation_id for h in heads)),
                                         "heads": [h.id for h in heads]})
            for row_id, crm, conversation_id, available_at, lease_until in followers:
                key = (crm, conversation_id)
                if key not in open_keys or row_id < by_key[key][0].id:
                    continue
                claimable = available_at <= now and (lease_until is None or lease_until < now)
                if not claimable or counts[key] >= per_conversation:
                    open_keys.discard(key)
                    continue
                counts[key] += 1
                ids.append(row_id)
            if ids:
                claim = _claim_statements(outbox, [_OUTBOX_HEAD], self._skip_locked)
                claim.lease.execute(conn, {"ids": ids, "owner": owner,
                                           "until": now + timedelta(seconds=lease_seconds)})
                for row in claim.rows.all(conn, {"ids": ids}):
                    by_key[(row.crm, row.conversation_id)].append(row)
        return list(by_key.values())

    def reclaim_from_gone(self, table: Table) -> int:
        """Free the rows leased by workers whose process has ended, without waiting for the leases to run out.

        Their claim stays counted as an attempt: a row that kills its worker each time is still dead-lettered once
        its tries are spent.
        """
        if self.liveness is None:
            return 0
        now = utcnow()
        with self.engine.connect() as conn:
            owners = list(conn.execute(select(table.c.lease_owner).distinct().where(
                table.c.status == "pending", table.c.lease_owner.is_not(None), table.c.lease_until >= now)).scalars())
        gone = [owner for owner in owners if self.liveness.is_gone(owner)]
        if not gone:
            return 0
        with bookkeeping(self.engine) as conn:
            freed = conn.execute(update(table).where(
                table.c.status == "pending", table.c.lease_owner.in_(gone)).values(
                lease_owner=None, lease_until=None)).rowcount
        if freed:
            log.warning("took over %d %s row(s) held by worker(s) that are gone: %s", freed, table.name,
                        ", ".join(sorted(gone)))
        return int(freed)

    def _sweep_gone(self, table: Table) -> None:
        """``reclaim_from_gone`` on a process's first claim, then every ``GONE_SWEEP_SECONDS`` at most."""
        if self.liveness is None or time.monotonic() < self._next_sweep.get(table.name, 0.0):
            return
        self._next_sweep[table.name] = time.monotonic() + GONE_SWEEP_SECONDS
        try:
            self.reclaim_from_gone(table)
        except Exception:
            log.warning("could not look for %s rows held by workers that are gone", table.name, exc_info=True)

    def _claim(self, table: Table, owner: str, limit: int, lease_seconds: int,
               conditions: Sequence[ColumnElement[bool]], parameters: dict[str, Any] | None = None,
               one_retried: bool = False) -> list[Any]:
        """Lease due rows of ``table`` that meet ``conditions`` (module constants: their statements are built once
        per set of them; ``parameters`` binds theirs)."""
        self._sweep_gone(table)
        now = utcnow()
        claim = _claim_statements(table, conditions, self._skip_locked)
        with bookkeeping(self.engine) as conn:
            if claim.unsorted:
                # Without statistics on the status (the table was filled since its last ANALYZE) the planner takes
                # the backlog for a few rows and sorts every pending row to find the first; read in id order, a
                # claim stops after the rows it returns.
                conn.exec_driver_sql("SET LOCAL enable_sort = off")
            found = claim.candidates.all(conn, {"now": now, "limit": limit, **(parameters or {})})
            ids = [row_id for row_id, _ in found]
            if one_retried:
                retried = [row_id for row_id, attempts in found if attempts > 0][:1]
                ids = [row_id for row_id, attempts in found if attempts == 0] + retried
            if not ids:
                return []
            claim.lease.execute(conn, {"ids": ids, "owner": owner, "until": now + timedelta(seconds=lease_seconds)})
            return claim.rows.all(conn, {"ids": ids})

    def release(self, table: Table, ids: Sequence[int], owner: str) -> None:
        """Give back claimed rows that were not started (shutdown): the claim does not count as an attempt."""
        if not ids:
            return
        with bookkeeping(self.engine) as conn:
            conn.execute(update(table).where(table.c.id.in_(list(ids)), table.c.lease_owner == owner).values(
                lease_owner=None, lease_until=None, attempts=table.c.attempts - 1))

    def extend_leases(self, table: Table, ids: Sequence[int], owner: str, lease_seconds: int) -> int:
        """Keep holding rows still being worked on; returns how many are still ours."""
        if not ids:
            return 0
        with bookkeeping(self.engine) as conn:
            return conn.execute(update(table).where(
                table.c.id.in_(list(ids)), table.c.lease_owner == owner, table.c.status == "pending").values(
                lease_until=utcnow() + timedelta(seconds=lease_seconds))).rowcount

    @contextmanager
    def holding(self, table: Table, ids: Sequence[int], owner: str, lease_seconds: int,
                still_working: Callable[[], bool] | None = None) -> Iterator[None]:
        """Renew the leases on ``ids`` every third of a lease while the block runs (a long CRM batch, say), so
        no other worker takes rows over that are still in flight.

        ``still_working`` is asked before each renewal; once it answers False the leases are no longer renewed
        (the work overran its deadline, and whoever answered has settled the rows).
        """
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(lease_seconds / 3):
                if still_working is not None and not still_working():
                    return
                try:
                    self.extend_leases(table, ids, owner, lease_seconds)
                except Exception:
                    log.warning("could not renew leases on %d %s row(s)", len(ids), table.name, exc_info=True)

        keeper = threading.Thread(target=renew, name="lease-keeper", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()

    def finish(self, conn: Connection, table: Table, row_id: int, status: str, *, owner: str | None = None,
               **values: Any) -> bool:
        """Settle a row; with ``owner``, only while that worker still holds it (returns whether it did)."""
        statement = update(table).where(table.c.id == row_id)
        if owner is not None:
            statement = statement.where(table.c.lease_owner == owner, table.c.status == "pending")
        return bool(conn.execute(statement.values(status=status, lease_owner=None, lease_until=None,
                                                  **values)).rowcount)

    def reschedule(self, table: Table, row_id: int, delay_seconds: float, error: str, *,
                   count_attempt: bool = True, at: datetime | None = None) -> None:
        """Try the row again after ``delay_seconds`` (or at ``at``, the same instant for rows that must come back
        together); ``count_attempt=False`` when this claim was no attempt (the row only waits for something still
        under way)."""
        attempts = {} if count_attempt else {"attempts": table.c.attempts - 1}
        with self.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == row_id).values(
                lease_owner=None, lease_until=None, last_error=redact(error)[:2000],
                available_at=at or utcnow() + timedelta(seconds=delay_seconds), **attempts))

    # -- dead letters ------------------------------------------------------------------------------------------
    def dead_letter(self, conn: Connection, *, stage: str, source_id: int, target: str, error_class: str,
                    reason: str, attempts: int, code: str | None = None, field: str | None = None,
                    owner: str | None = None) -> int | None:
        """Settle the row as dead and record why; with ``owner``, only while that worker holds it (else None)."""
        reason = redact(reason)  # a provider's or CRM's error text may quote the customer's number or address
        if not self.finish(conn, STAGE_TABLES[stage], source_id, "dead", owner=owner, last_error=reason[:2000]) \
                and owner is not None:
            return None
        return conn.execute(dead_letters.insert().values(
            stage=stage, source_id=source_id, target=target, error_class=error_class, error_code=code,
            reason=reason[:4000], field=field, attempts=attempts, created_at=utcnow())).inserted_primary_key[0]

    def list_dead_letters(self, include_resolved: bool = False, limit: int = 100) -> list[Row[Any]]:
        query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if not include_resolved:
            query = query.where(dead_letters.c.resolution.is_(None))
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def get_dead_letter(self, letter_id: int) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(select(dead_letters).where(dead_letters.c.id == letter_id)).first()

    def resolve_dead_letter(self, letter_id: int, resolution: str) -> bool:
        """Replay (the source row becomes pending again, with a fresh retry budget) or discard a dead letter."""
        with self.engine.begin() as conn:
            letter = conn.execute(select(dead_letters).where(
                dead_letters.c.id == letter_id, dead_letters.c.resolution.is_(None))).first()
            if letter is None:
                return False
            if resolution == "replayed":
                table = STAGE_TABLES[letter.stage]
                # an outbox row may have been written before it failed: its next try counts as a retry (attempt
                # 2), so the connector checks before writing again; a send keeps its unknown attempt, if any, so
                # it is reconciled with the provider before anything is sent again
                attempts = 0 if letter.stage == "pipeline" else 1
                fresh = {"certain_failures": 0} if table is outbox else {}  # so the replay counts as uncertain
                conn.execute(update(table).where(table.c.id == letter.source_id).values(
                    status="pending", attempts=attempts, available_at=utcnow(), lease_owner=None, lease_until=None,
                    **fresh))
            conn.execute(update(dead_letters).where(dead_letters.c.id == letter_id).values(
                resolution=resolution, resolved_at=utcnow()))
            return True

    # -- gauges ------------------------------------------------------------------------------------------------
    def depths(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                "inbox": conn.execute(select(func.count()).where(inbox.c.status == "pending")).scalar_one(),
                "outbox": conn.execute(select(func.count()).where(outbox.c.status == "pending")).scalar_one(),
                "sends": conn.execute(select(func.count()).where(sends.c.status == "pending")).scalar_one(),
                "dead_letters": conn.execute(select(func.count()).where(
                    and_(dead_letters.c.resolution.is_(None)))).scalar_one(),
            }
