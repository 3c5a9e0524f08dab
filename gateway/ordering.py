"""Per-conversation order in the inbox, across workers and crashes.

An inbox row's conversation is known only once it is stored; what is known as soon as the row is normalised is who
sent it. So a row's *order keys* are its senders' identifiers (the key the enrichment step already holds a sender's
later rows back by): two rows sharing one come from the same customer and, threaded by continuity, the same
conversation. A worker writes the keys of the rows it claimed right after normalising them, and stores a row only
when no older pending row shares one of its keys and no older row is claimed but not yet keyed (its sender is not
known yet). A row held by a worker that died, or waiting for a retry, therefore holds its customer's later rows back
until it is stored, as an outbox row does for its conversation's later writes; other customers' rows go on.

The keys are digests, so no identifier is copied; they are removed when the row is settled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.storage.db import bookkeeping, is_sqlite
from gateway.storage.prepared import Prepared
from gateway.storage.tables import inbox, inbox_keys

OrderKeys = frozenset[str]
_FORGET = Prepared(delete(inbox_keys).where(inbox_keys.c.inbox_id.in_(bindparam("row_ids", expanding=True))))
_ADD_KEYS = {  # by whether the engine is SQLite: each dialect's own INSERT ... ON CONFLICT
    True: Prepared(sqlite.insert(inbox_keys).on_conflict_do_nothing(index_elements=["inbox_id", "key"])),
    False: Prepared(postgresql.insert(inbox_keys).on_conflict_do_nothing(index_elements=["inbox_id", "key"]))}
_MARK_KEYED = Prepared(update(inbox).where(inbox.c.id.in_(bindparam("row_ids", expanding=True)),
                                           inbox.c.keyed.is_(False)).values(keyed=True))
_OLDER_PENDING_KEYS = Prepared(
    select(inbox_keys.c.inbox_id, inbox_keys.c.key).join(inbox, inbox.c.id == inbox_keys.c.inbox_id)
    .where(inbox_keys.c.key.in_(bindparam("keys", expanding=True)), inbox_keys.c.inbox_id < bindparam("newest"),
           inbox_keys.c.inbox_id.not_in(bindparam("row_ids", expanding=True)), inbox.c.status == "pending"))
_OLDEST_UNKEYED = Prepared(select(func.min(inbox.c.id)).where(
    inbox.c.status == "pending", inbox.c.keyed.is_(False), inbox.c.attempts > 0, inbox.c.id < bindparam("newest"),
    inbox.c.id.not_in(bindparam("row_ids", expanding=True))))


def order_keys(senders: Iterable[tuple[str, str]]) -> OrderKeys:
    """The digests of the senders' identifiers (``senders_of`` the row's messages; none for a status update or a
    CRM's reply event)."""
    return frozenset(hashlib.sha256(f"{kind}:{value}".encode()).hexdigest() for kind, value in senders)


def record_keys(engine: Engine, keys: Mapping[int, OrderKeys]) -> None:
    """Write the order keys of normalised rows, and mark the rows keyed, in one transaction."""
    if not keys:
        return
    rows = [{"inbox_id": row_id, "key": key} for row_id, row_keys in keys.items() for key in sorted(row_keys)]
    with bookkeeping(engine) as conn:
        if rows:
            _ADD_KEYS[is_sqlite(engine)].execute_many(conn, rows)
        _MARK_KEYED.execute(conn, {"row_ids": list(keys)})


def forget_keys(conn: Connection, row_ids: Sequence[int]) -> None:
    """Settled rows hold nobody back any more."""
    if row_ids:
        _FORGET.execute(conn, {"row_ids": list(row_ids)})


def must_wait(conn: Connection, items: Sequence[tuple[int, OrderKeys]]) -> set[int]:
    """Of rows about to be stored in this transaction, in id order, those that must wait for an older one.

    A row waits when an older pending row (not among ``items``) shares one of its keys, when an older row is claimed
    but not yet keyed, or when an older one of ``items`` waits and shares a key with it.
    """
    if not items:
        return set()
    ids = [row_id for row_id, _ in items]
    newest = max(ids)
    keys = set().union(*(row_keys for _, row_keys in items))
    older: list[tuple[int, str]] = []
    if keys:
        older = [(row_id, key) for row_id, key in _OLDER_PENDING_KEYS.all(
            conn, {"keys": sorted(keys), "newest": newest, "row_ids": ids})]
    oldest_unkeyed = _OLDEST_UNKEYED.scalar(conn, {"newest": newest, "row_ids": ids})
    waiting: set[int] = set()
    held: set[str] = set()
    for row_id, row_keys in sorted(items):
        if ((oldest_unkeyed is not None and oldest_unkeyed < row_id) or row_keys & held
                or any(older_id < row_id and key in row_keys for older_id, key in older)):
            waiting.add(row_id)
            held |= row_keys
    return waiting
