"""Retention: what the gateway stores is removed once the business's ``retention:`` periods have passed.

Each kind is removed in small batches, one short transaction each, so webhooks and workers go on meanwhile. Nothing
is removed that work still needs: an inbox row not processed, a message whose CRM write or reply is still pending
(or dead-lettered and not yet resolved), an open dead letter. What lets a later message join its conversation
(thread keys, the conversation, its CRM ticket link, the customer and identifiers) stays until the conversation itself
expires (``conversations_days``), and customers and identifiers stay until erased on request. A conversation removed
takes its acknowledgement, escalation clocks and surveys with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, Text, and_, cast, delete, exists, func, not_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from gateway.attachments import SCHEME
from gateway.config import RetentionConfig
from gateway.storage.cursors import Cursors, exclusive
from gateway.storage.db import is_sqlite, utcnow
from gateway.storage.tables import (
    acknowledgements,
    admin_audit,
    conversations,
    crm_links,
    crm_notes,
    dead_letters,
    delivery_log,
    inbox,
    messages,
    outbox,
    provider_statuses,
    send_log,
    sends,
    sla_clocks,
    surveys,
    thread_keys,
)

log = logging.getLogger(__name__)
EXPIRED = "expired:"  # an attachment's location once retention removed its bytes
FILE_GRACE = timedelta(days=1)  # a file this recent may belong to a message not committed yet
LAST_RUN = "retention:last_run"
KINDS = {
    "raw_payloads": "inbox rows emptied or removed",
    "provider_statuses": "provider statuses removed",
    "attachments": "messages whose attachments were removed",
    "message_text": "messages whose text was blanked, and survey comments",
    "delivery_logs": "delivery and send log rows, written notes, finished acknowledgements and clocks removed",
    "dead_letters": "resolved dead letters removed",
    "admin_audit": "console audit log rows removed",
    "conversations": "idle conversations removed with their messages",
    "attachment_files": "attachment files deleted",
}
# Message extras holding what the customer wrote, chose or where they are (connectors/meta.py, twilio.py,
# mailgun.py, sendgrid.py, gateway/mail/normalize.py): blanked with the text.
PERSONAL_EXTRAS = frozenset({
    "location", "contacts", "interactive",  # WhatsApp Cloud / Messenger: a shared place, contact cards, a choice
    "Latitude", "Longitude", "FromCity", "FromState", "ButtonText",  # Twilio
    "stripped_text", "sender_ip",  # Mailgun, SendGrid
    "attachments_skipped",  # email: the file names of parts too large to keep
})
FINISHED_ACKS = ("sent", "skipped", "failed")
FINISHED_CLOCKS = ("answered", "escalated", "failed")
WRITTEN_SURVEYS = ("written", "failed")


def _open_letter(stage: str, source: Any) -> ColumnElement[bool]:
    return exists().where(dead_letters.c.stage == stage, dead_letters.c.source_id == source,
                          dead_letters.c.resolution.is_(None))


def _unsettled(table: Any, stage: str, column: Any, value: Any) -> ColumnElement[bool]:
    """Rows of a queue, matched on ``column``, still pending or dead-lettered and not resolved."""
    return exists().where(column == value, or_(
        table.c.status == "pending", and_(table.c.status == "dead", _open_letter(stage, table.c.id))))


def _settled_message(message_id: Any) -> ColumnElement[bool]:
    """A message whose CRM writes and channel send are all done (or given up by an admin)."""
    return not_(or_(_unsettled(outbox, "delivery", outbox.c.message_id, message_id),
                    _unsettled(sends, "send", sends.c.message_id, message_id)))


@dataclass
class Retention:
    """One retention run over ``engine``; ``now`` is taken as the current time (tests and benchmarks pass theirs)."""

    engine: Engine
    settings: RetentionConfig
    attachments_root: Path | None = None
    on_batch: Callable[[str], None] | None = None  # called after each committed batch (tests interleave with it)
    removed: dict[str, int] = field(default_factory=dict)

    def run(self, now: datetime | None = None, *, dry_run: bool = False) -> dict[str, int]:
        """Remove what is past its period; return counts per kind (with ``dry_run``, what would be removed)."""
        now = now or utcnow()
        self.removed = {}
        s = self.settings
        steps: list[tuple[str, int | None, Callable[[datetime], Select[Any]], Callable[..., int]]] = [
            ("raw_payloads", s.raw_payloads_days, self._raw_candidates, self._empty_raw),
            ("provider_statuses", s.provider_statuses_days, self._status_candidates, self._delete_statuses),
            ("attachments", s.attachments_days, self._attachment_candidates, self._expire_attachments),
            ("message_text", s.message_text_days, self._text_candidates, self._blank_text),
            ("message_text", s.message_text_days, self._comment_candidates, self._blank_comments),
            ("delivery_logs", s.delivery_logs_days, lambda c: self._created_before(delivery_log, c),
             self._delete_ids(delivery_log)),
            ("delivery_logs", s.delivery_logs_days, lambda c: self._created_before(send_log, c),
             self._delete_ids(send_log)),
            ("delivery_logs", s.delivery_logs_days, self._note_candidates, self._delete_ids(crm_notes)),
            ("delivery_logs", s.delivery_logs_days, self._ack_candidates, self._delete_acks),
            ("delivery_logs", s.delivery_logs_days, self._clock_candidates, self._delete_ids(sla_clocks)),
            ("dead_letters", s.dead_letters_days, self._letter_candidates, self._delete_ids(dead_letters)),
            ("admin_audit", s.admin_audit_days, lambda c: select(admin_audit.c.id).where(admin_audit.c.at < c),
             self._delete_ids(admin_audit)),
            ("conversations", s.conversations_days, self._conversation_candidates, self._delete_conversations),
        ]
        for kind, days, candidates, apply in steps:
            self.removed.setdefault(kind, 0)
            if days is None:
                continue
            query = candidates(now - timedelta(days=days))
            if dry_run:
                with self.engine.connect() as conn:
                    self.removed[kind] += conn.execute(
                        select(func.count()).select_from(query.subquery())).scalar_one()
                continue
            self.removed[kind] += self._batches(kind, query, lambda conn, ids, a=apply: a(conn, ids, now))
        self.removed["attachment_files"] = self._sweep_files(now, dry_run)
        return self.removed

    def _batches(self, kind: str, query: Select[Any], apply: Callable[[Connection, list[Any]], int]) -> int:
        total = 0
        size = self.settings.batch_size if kind != "conversations" else max(1, self.settings.batch_size // 10)
        if not is_sqlite(self.engine):
            query = query.with_for_update(skip_locked=True)
        while True:
            with self.engine.begin() as conn:
                ids = list(conn.execute(query.limit(size)).scalars())
                if ids:
                    total += apply(conn, ids)
            if ids and self.on_batch is not None:
                self.on_batch(kind)
            if len(ids) < size:
                return total

    # -- raw payloads and statuses -------------------------------------------------------------------------------
    def _raw_candidates(self, cutoff: datetime) -> Select[Any]:
        pending_work = exists().where(messages.c.inbox_id == inbox.c.id, not_(_settled_message(messages.c.id)))
        processed = or_(inbox.c.status.in_(("done", "ignored")),
                        and_(inbox.c.status == "failed", not_(_open_letter("pipeline", inbox.c.id))))
        return (select(inbox.c.id).where(inbox.c.payload_removed_at.is_(None), inbox.c.received_at < cutoff,
                                         processed, not_(pending_work)).order_by(inbox.c.received_at))

    @staticmethod
    def _empty_raw(conn: Connection, ids: list[int], now: datetime) -> int:
        """Rows a message came of keep their id (the message points at it) and provider id (a late retry of the
        provider stays a duplicate); the others go."""
        kept = set(conn.execute(select(messages.c.inbox_id).where(messages.c.inbox_id.in_(ids))).scalars())
        conn.execute(update(inbox).where(inbox.c.id.in_(kept)).values(
            body=b"", headers={}, public_url="", payload_removed_at=now))
        conn.execute(delete(inbox).where(inbox.c.id.in_([i for i in ids if i not in kept])))
        return len(ids)

    @staticmethod
    def _status_candidates(cutoff: datetime) -> Select[Any]:
        return select(provider_statuses.c.id).where(provider_statuses.c.occurred_at < cutoff)

    @staticmethod
    def _delete_statuses(conn: Connection, ids: list[int], now: datetime) -> int:
        return _delete(conn, provider_statuses, ids)

    # -- messages ------------------------------------------------------------------------------------------------
    @staticmethod
    def _attachment_candidates(cutoff: datetime) -> Select[Any]:
        return select(messages.c.id).where(messages.c.attachments_removed_at.is_(None),
                                           messages.c.received_at < cutoff, _settled_message(messages.c.id))

    @staticmethod
    def _expire_attachments(conn: Connection, ids: list[str], now: datetime) -> int:
        """The files go in the sweep that follows, once no message refers to them."""
        for row in conn.execute(select(messages.c.id, messages.c.data).where(messages.c.id.in_(ids))):
            data = dict(row.data)
            data["attachments"] = [{**a, "location": EXPIRED} if str(a.get("location", "")).startswith(SCHEME)
                                   else a for a in data.get("attachments") or []]
            conn.execute(update(messages).where(messages.c.id == row.id).values(data=data, attachments_removed_at=now))
        return len(ids)

    @staticmethod
    def _text_candidates(cutoff: datetime) -> Select[Any]:
        return select(messages.c.id).where(messages.c.text_removed_at.is_(None), messages.c.received_at < cutoff,
                                           _settled_message(messages.c.id))

    @staticmethod
    def _blank_text(conn: Connection, ids: list[str], now: datetime) -> int:
        for row in conn.execute(select(messages.c.id, messages.c.data).where(messages.c.id.in_(ids))):
            data = {**row.data, "subject": None, "text": "", "full_text": "", "html": None,
                    "extras": {k: v for k, v in (row.data.get("extras") or {}).items() if k not in PERSONAL_EXTRAS},
                    "attachments": [{**a, "filename": ""} for a in row.data.get("attachments") or []]}
            conn.execute(update(messages).where(messages.c.id == row.id).values(data=data, text_removed_at=now))
        conn.execute(update(outbox).where(outbox.c.message_id.in_(ids), outbox.c.status != "pending").values(
            fields={}))
        return len(ids)

    @staticmethod
    def _comment_candidates(cutoff: datetime) -> Select[Any]:
        return select(surveys.c.id).where(surveys.c.comment.is_not(None), surveys.c.status.in_(WRITTEN_SURVEYS),
                                          surveys.c.answered_at < cutoff)

    @staticmethod
    def _blank_comments(conn: Connection, ids: list[int], now: datetime) -> int:
        conn.execute(update(surveys).where(surveys.c.id.in_(ids)).values(comment=None))
        return len(ids)

    # -- logs and dead letters -----------------------------------------------------------------------------------
    @staticmethod
    def _created_before(table: Any, cutoff: datetime) -> Select[Any]:
        return select(table.c.id).where(table.c.created_at < cutoff)

    @staticmethod
    def _note_candidates(cutoff: datetime) -> Select[Any]:
        return select(crm_notes.c.id).where(crm_notes.c.status == "done", crm_notes.c.done_at < cutoff)

    @staticmethod
    def _ack_candidates(cutoff: datetime) -> Select[Any]:
        """Only a conversation's first message is acknowledged: its row is not needed once the answer went."""
        return select(acknowledgements.c.conversation_id).where(acknowledgements.c.status.in_(FINISHED_ACKS),
                                                                acknowledgements.c.updated_at < cutoff)

    @staticmethod
    def _delete_acks(conn: Connection, ids: list[str], now: datetime) -> int:
        conn.execute(delete(acknowledgements).where(acknowledgements.c.conversation_id.in_(ids)))
        return len(ids)

    @staticmethod
    def _clock_candidates(cutoff: datetime) -> Select[Any]:
        return select(sla_clocks.c.id).where(sla_clocks.c.status.in_(FINISHED_CLOCKS), sla_clocks.c.created_at < cutoff)

    @staticmethod
    def _letter_candidates(cutoff: datetime) -> Select[Any]:
        return select(dead_letters.c.id).where(dead_letters.c.resolution.is_not(None),
                                               dead_letters.c.resolved_at < cutoff)

    @staticmethod
    def _delete_ids(table: Any) -> Callable[[Connection, list[int], datetime], int]:
        return lambda conn, ids, now: _delete(conn, table, ids)

    # -- conversations -------------------------------------------------------------------------------------------
    @staticmethod
    def _conversation_candidates(cutoff: datetime) -> Select[Any]:
        c = conversations.c.id
        busy = or_(_unsettled(outbox, "delivery", outbox.c.conversation_id, c),
                   _unsettled(sends, "send", sends.c.conversation_id, c),
                   _unsettled(crm_notes, "note", crm_notes.c.conversation_id, c),
                   exists().where(surveys.c.conversation_id == c, surveys.c.status.in_(("answered", "writing"))))
        return select(c).where(conversations.c.last_activity_at < cutoff, not_(busy)).order_by(
            conversations.c.last_activity_at)

    @staticmethod
    def _delete_conversations(conn: Connection, ids: list[str], now: datetime) -> int:
        message_ids = list(conn.execute(select(messages.c.id).where(messages.c.conversation_id.in_(ids))).scalars())
        inbox_ids = set(conn.execute(select(messages.c.inbox_id).where(messages.c.id.in_(message_ids))).scalars())
        outbox_ids = list(conn.execute(select(outbox.c.id).where(outbox.c.conversation_id.in_(ids))).scalars())
        send_ids = list(conn.execute(select(sends.c.id).where(sends.c.conversation_id.in_(ids))).scalars())
        note_ids = list(conn.execute(select(crm_notes.c.id).where(crm_notes.c.conversation_id.in_(ids))).scalars())
        for stage, sources in (("delivery", outbox_ids), ("send", send_ids), ("note", note_ids),
                               ("pipeline", inbox_ids)):
            for chunk in _chunks(list(sources)):
                conn.execute(delete(dead_letters).where(dead_letters.c.stage == stage,
                                                        dead_letters.c.source_id.in_(chunk)))
        for chunk in _chunks(outbox_ids):
            conn.execute(delete(delivery_log).where(delivery_log.c.outbox_id.in_(chunk)))
            conn.execute(delete(outbox).where(outbox.c.id.in_(chunk)))
        for chunk in _chunks(send_ids):
            conn.execute(delete(send_log).where(send_log.c.send_id.in_(chunk)))
            conn.execute(delete(sends).where(sends.c.id.in_(chunk)))
        conn.execute(delete(crm_notes).where(crm_notes.c.conversation_id.in_(ids)))
        for chunk in _chunks(message_ids):
            conn.execute(delete(crm_links).where(crm_links.c.entity == "message", crm_links.c.local_id.in_(chunk)))
            conn.execute(delete(messages).where(messages.c.id.in_(chunk)))
        for chunk in _chunks(list(inbox_ids)):
            still_used = exists().where(messages.c.inbox_id == inbox.c.id)
            conn.execute(delete(inbox).where(inbox.c.id.in_(chunk), not_(still_used)))
        conn.execute(delete(thread_keys).where(thread_keys.c.conversation_id.in_(ids)))
        for table in (acknowledgements, sla_clocks, surveys):
            conn.execute(delete(table).where(table.c.conversation_id.in_(ids)))
        conn.execute(delete(crm_links).where(crm_links.c.entity == "conversation", crm_links.c.local_id.in_(ids)))
        conn.execute(delete(conversations).where(conversations.c.id.in_(ids)))
        return len(ids)

    # -- files ---------------------------------------------------------------------------------------------------
    def _sweep_files(self, now: datetime, dry_run: bool) -> int:
        """Delete stored files no message refers to any more (older than a day: a newer one may be in flight)."""
        s = self.settings
        root = self.attachments_root
        if root is None or not root.is_dir() or (s.attachments_days is None and s.conversations_days is None):
            return 0
        referenced = self._referenced_digests()
        before = (now - FILE_GRACE).timestamp()
        removed = 0
        for path in _stored_files(root):
            if path.name in referenced or path.stat().st_mtime >= before:
                continue
            if not dry_run:
                path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _referenced_digests(self) -> set[str]:
        digests: set[str] = set()
        query = select(messages.c.data).where(cast(messages.c.data, Text).like(f"%{SCHEME}%"))
        with self.engine.connect() as conn:
            for data in conn.execute(query.execution_options(yield_per=1000)).scalars():
                digests.update(str(a["location"])[len(SCHEME):] for a in data.get("attachments") or []
                               if str(a.get("location", "")).startswith(SCHEME))
        return digests


def _delete(conn: Connection, table: Any, ids: list[Any]) -> int:
    conn.execute(delete(table).where(table.c.id.in_(ids)))
    return len(ids)


def _chunks(values: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _stored_files(root: Path) -> Iterator[Path]:
    """Files laid out as ``root/ab/cd/<sha256>`` (``AttachmentStore.path_for``); temporary files are left alone."""
    for path in root.glob("??/??/*"):
        if len(path.name) == 64 and path.is_file():
            yield path


def retention_job(runtime: Any, every: timedelta = timedelta(days=1)) -> Callable[[], None]:
    """A scheduler job: a retention run when the last one (by any process) is ``every`` old; one process at a time."""
    cursor_store = Cursors(runtime.engine)

    def job() -> None:
        with exclusive(runtime.engine, "retention", runtime.data_dir / "locks") as acquired:
            if not acquired:
                return
            last = (cursor_store.get(LAST_RUN) or {}).get("at")
            if last and utcnow() - datetime.fromisoformat(last) < every:
                return
            started = time.monotonic()
            try:
                removed = retention_for(runtime).run()
            except Exception:
                log.exception("retention run failed; the next run retries")
                return
            cursor_store.put(LAST_RUN, {"at": utcnow().isoformat(), "removed": removed})
            log.info("retention run in %.1fs: %s", time.monotonic() - started,
                     ", ".join(f"{kind} {count}" for kind, count in removed.items() if count) or "nothing to remove")

    return job


def retention_for(runtime: Any) -> Retention:
    return Retention(runtime.engine, runtime.config.settings.retention, runtime.data_dir / "attachments")
