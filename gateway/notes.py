"""Notes for the agent: what happened to a reply, written as an internal note on the CRM record.

A failure, a closed window, an opt-out or a dead letter is queued here in the transaction that learns of it, in words
an agent understands, and a worker writes it to the CRM (never as a public comment). Each note has a key, unique per
CRM, so the same news is written once however often it is learnt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row, select

from gateway import metrics
from gateway.errors import DeliveryError, PermanentError, RetryableError, as_delivery_error
from gateway.model import StatusUpdate
from gateway.plugins import InternalNotes, PublicComments
from gateway.redact import redact
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.links import DbLinkStore
from gateway.storage.queues import insert_for
from gateway.storage.tables import crm_notes, sends

log = logging.getLogger(__name__)


def queue_note(conn: Connection, crm: str | None, conversation_id: str, key: str, text: str, *,
               public: bool = False) -> None:
    """Queue an internal note for ``crm``'s record of the conversation; a key already queued is kept once.

    ``public``: a public comment instead, for what the gateway itself told the customer (``PublicComments``).
    """
    if crm is None:
        return
    now = utcnow()
    conn.execute(insert_for(conn.engine, crm_notes).values(
        crm=crm, conversation_id=conversation_id, key=key[:255], text=text, status="pending", attempts=0,
        available_at=now, created_at=now, public=public).on_conflict_do_nothing(index_elements=["crm", "key"]))


def note_failed_send(conn: Connection, update: StatusUpdate) -> None:
    """The provider reports a reply it accepted as failed: tell the agent, with the provider's code."""
    row = conn.execute(select(sends.c.id, sends.c.crm, sends.c.conversation_id).where(
        sends.c.channel == update.connector, sends.c.provider_message_id == update.provider_message_id)).first()
    if row is None:
        return
    reason = update.extras.get("ErrorMessage") or update.extras.get("error_title") or ""
    code = f" (error {update.error_code}{': ' + reason if reason else ''})" if update.error_code else ""
    text = (f"Not delivered: {update.connector} reported the reply as {update.status}{code}. "
            + explain_provider_code(update.error_code))
    queue_note(conn, row.crm, row.conversation_id, f"send-{row.id}-status-{update.status}", text.strip())


# What a provider's code means for the agent; codes from the providers' error references.
PROVIDER_CODES = {
    "21610": "The customer has opted out (sent STOP); they must text START before they can be messaged.",
    "21211": "The customer's number is not a valid phone number.",
    "21614": "The number cannot receive SMS (a landline?).",
    "30003": "The customer's handset is unreachable or switched off; try again later.",
    "30005": "The number is unknown or no longer exists.",
    "30006": "The number is a landline or cannot receive SMS.",
    "30007": "The carrier filtered the message as spam.",
    "63016": "The WhatsApp 24-hour window is closed: only an approved template can be sent.",
    "131047": "The WhatsApp 24-hour window is closed: only an approved template can be sent.",
    "131026": "WhatsApp could not deliver to this number (not on WhatsApp, or an old app version).",
}


def explain_provider_code(code: str | None) -> str:
    return PROVIDER_CODES.get(code or "", "")


class NoteWorker:
    """Claims queued notes and writes them through the CRM's ``InternalNotes`` ability."""

    def __init__(self, runtime: Runtime, owner: str) -> None:
        self.rt = runtime
        self.owner = owner
        self.settings = runtime.config.settings.workers

    def claim(self) -> list[Row[Any]]:
        return self.rt.queues.claim_notes(self.owner, self.settings.batch_size, self.settings.lease_seconds)

    def release(self, rows: list[Row[Any]]) -> None:
        self.rt.queues.release(crm_notes, [row.id for row in rows], self.owner)

    def process(self, row: Row[Any]) -> int:
        crm = self.rt.crms.get(row.crm)
        if row.public and isinstance(crm, PublicComments):
            return self._write(row, crm.post_public_comment)
        if not isinstance(crm, InternalNotes):
            # the CRM cannot take notes: the news stays in the log and in `gateway dlq list`
            self._dead(row, PermanentError(f"crm {row.crm!r} takes no internal notes: {row.text}",
                                           code="no_notes"))
            return 1
        # a CRM without public comments keeps what the customer was told as an internal note
        return self._write(row, crm.post_note)

    def _write(self, row: Row[Any], post: Callable[..., None]) -> int:
        links = DbLinkStore(self.rt.engine, row.crm, self.rt.directories.get(row.crm))
        try:
            post(row.conversation_id, row.text, links, key=f"gw-note-{row.crm}-{row.key}")
        except Exception as exc:
            error = as_delivery_error(exc)
            delay = self.rt.retry_policy.next_delay(row.attempts, error) if error.retryable else None
            if delay is None:
                self._dead(row, error)
            else:
                log.warning("note %s for %s failed (attempt %s, retry in %.0fs): %s", row.id, row.crm,
                            row.attempts, delay, redact(str(error)))
                self.rt.queues.reschedule(crm_notes, row.id, delay, str(error))
            return 1
        with self.rt.engine.begin() as conn:
            self.rt.queues.finish(conn, crm_notes, row.id, "done", done_at=utcnow(), last_error=None)
        return 1

    def _dead(self, row: Row[Any], error: DeliveryError) -> None:
        error_class = "exhausted" if isinstance(error, RetryableError) else "permanent"
        log.error("note %s for %s dead-lettered (%s): %s", row.id, row.crm, error_class, redact(str(error)))
        with self.rt.engine.begin() as conn:
            self.rt.queues.dead_letter(conn, stage="note", source_id=row.id, target=row.crm,
                                       error_class=error_class, reason=str(error), attempts=row.attempts,
                                       code=error.code)
        metrics.DEAD_LETTERED.labels("note", row.crm).inc()
