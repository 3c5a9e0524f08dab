"""The send worker: the send queue -> a channel connector -> the customer's phone, mailbox or chat, exactly once.

Providers take no idempotency key, so each attempt is recorded (``attempt_started_at``, committed) before the
provider is called and cleared with its outcome. A row that still carries it was interrupted (a timeout, a crash
between the call and the commit): before anything is sent again the connector's ``reconcile`` asks the provider
whether that attempt went out. A reply is never resent blindly.

Refusals the agent must hear about (opted out, closed window, invalid recipient, retries spent) become internal
notes on the CRM record the reply came from.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, update

from gateway import metrics
from gateway.acks import record_sent
from gateway.context import customer_context
from gateway.errors import (
    DeliveryError,
    OutcomeUnknown,
    PermanentError,
    RetryableError,
    as_delivery_error,
    never_reached,
)
from gateway.model import Message
from gateway.notes import queue_note
from gateway.optouts import add_opt_out, opted_out
from gateway.plugins import CustomerView, ReplySender, SendRequest, SendResult
from gateway.redact import redact
from gateway.replies import last_inbound
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import inbox, messages, send_log, sends, thread_keys

log = logging.getLogger(__name__)


def send_token(send_id: int) -> str:
    """The token a connector attaches to the provider's message so an uncertain attempt can be found again."""
    return f"gw-send-{send_id}"


class SendWorker:
    """Claims due sends (the oldest pending one of each conversation) and sends them one at a time."""

    def __init__(self, runtime: Runtime, owner: str) -> None:
        self.rt = runtime
        self.owner = owner
        self.settings = runtime.config.settings.workers

    def claim(self) -> list[Row[Any]]:
        return self.rt.queues.claim_sends(self.owner, self.settings.batch_size, self.settings.lease_seconds)

    def release(self, rows: list[Row[Any]]) -> None:
        self.rt.queues.release(sends, [row.id for row in rows], self.owner)

    def process(self, row: Row[Any]) -> int:
        started = time.monotonic()
        channel = self.rt.channels.get(row.channel)
        if not isinstance(channel, ReplySender):
            self._dead(row, PermanentError(f"channel {row.channel!r} is no longer configured or cannot send",
                                           code="unknown_channel"), started)
            return 1
        try:
            request = self._request(row)
        except Exception as exc:
            log.exception("send %s cannot be prepared", row.id)
            self._dead(row, PermanentError(f"cannot prepare: {type(exc).__name__}: {exc}", code="internal"), started)
            return 1
        with self.rt.engine.connect() as conn:
            keyword = opted_out(conn, row.channel, _address(request.message))
        if keyword is not None:
            self._blocked(row, started, f"Not sent: the customer opted out of messages on this channel (they sent "
                                        f"{keyword}). They must text START before they can be messaged again.")
            return 1
        with self.rt.queues.holding(sends, [row.id], self.owner, self.settings.lease_seconds):
            if row.attempt_started_at is not None and self._reconciled(channel, request, row, started):
                return 1
            self._attempt(channel, request, row, started)
        return 1

    # -- one attempt -------------------------------------------------------------------------------------------
    def _reconciled(self, channel: ReplySender, request: SendRequest, row: Row[Any], started: float) -> bool:
        """True when the earlier, unknown attempt is settled (it went out, or the provider cannot tell yet)."""
        try:
            found = channel.reconcile(request)
        except OutcomeUnknown as exc:
            self._dead(row, exc, started, uncertain=True)
            return True
        except Exception as exc:
            self._retry(row, as_delivery_error(exc), started, uncertain=True)
            return True
        if found is not None:
            log.info("send %s: the earlier attempt went out as %s; not sent again", row.id, found.provider_message_id)
            self._sent(row, found, started, outcome="reconciled")
            return True
        return False

    def _attempt(self, channel: ReplySender, request: SendRequest, row: Row[Any], started: float) -> None:
        bucket, per_minute = channel.send_limit(request)
        try:
            self.rt.limiter(bucket, per_minute).acquire()
        except RetryableError as exc:  # the shared budget is spent for a while: nothing was attempted
            self._retry(row, exc, started, uncertain=False)
            return
        now = utcnow()
        with self.rt.engine.begin() as conn:  # recorded before the call: a crash from here on is reconciled
            conn.execute(update(sends).where(sends.c.id == row.id).values(attempt_started_at=now))
        try:
            result = channel.send(request)
        except PermanentError as exc:  # the provider refused it: surely not sent
            if exc.code == "opted_out":
                with self.rt.engine.begin() as conn:
                    add_opt_out(conn, row.channel, _address(request.message) or "", "STOP")
            self._dead(row, exc, started)
            return
        except Exception as exc:
            # a timeout or 5xx may or may not have reached the customer: the next attempt reconciles first
            self._retry(row, as_delivery_error(exc), started, uncertain=not never_reached(exc))
            return
        self._sent(row, result, started, outcome="sent")

    def _request(self, row: Row[Any]) -> SendRequest:
        with self.rt.engine.connect() as conn:
            stored = conn.execute(select(messages).where(messages.c.id == row.message_id)).one()
            message = Message.model_validate(stored.data)
            answered = last_inbound(conn, row.conversation_id, row.channel)
            if answered is None:
                raise LookupError(f"conversation {row.conversation_id} has no customer message on {row.channel}")
            customer = customer_context(conn, stored.customer_id)
        return SendRequest(
            send_id=row.id, attempt=row.attempts, token=send_token(row.id), message=message,
            reply_to=Message.model_validate(answered.data),
            customer=CustomerView(customer["id"], customer["display_name"],
                                  tuple((i["kind"], i["value"]) for i in customer["identifiers"])),
            last_inbound_at=answered.received_at, attempt_started_at=row.attempt_started_at)

    # -- outcomes ----------------------------------------------------------------------------------------------
    def _sent(self, row: Row[Any], result: SendResult, started: float, outcome: str) -> None:
        now = utcnow()
        with self.rt.engine.begin() as conn:
            self.rt.queues.finish(conn, sends, row.id, "sent", sent_at=now, attempt_started_at=None,
                                  provider_message_id=result.provider_message_id[:255], last_error=None)
            self._log(conn, row, outcome, started, provider_message_id=result.provider_message_id[:255],
                      detail=result.detail)
            for key in result.thread_keys:  # the customer's answer to this reply threads back here
                conn.execute(insert_for(conn.engine, thread_keys).values(
                    key=key, conversation_id=row.conversation_id).on_conflict_do_nothing(index_elements=["key"]))
            automatic = record_sent(conn, row, now)
            event_stored = conn.execute(select(inbox.c.received_at).join(
                messages, messages.c.inbox_id == inbox.c.id).where(messages.c.id == row.message_id)).scalar()
        metrics.SENT.labels(row.channel).inc()
        if isinstance(event_stored, datetime) and not automatic:
            metrics.REPLY_LATENCY.labels(row.channel).observe((now - event_stored).total_seconds())

    def _retry(self, row: Row[Any], error: DeliveryError, started: float, *, uncertain: bool) -> None:
        metrics.SEND_FAILURES.labels(row.channel, "retryable").inc()
        delay = self.rt.retry_policy.next_delay(row.attempts, error)
        if delay is None:
            self._dead(row, error, started, exhausted=True, uncertain=uncertain)
            return
        log.warning("send %s on %s failed (attempt %s, retry in %.0fs%s): %s", row.id, row.channel, row.attempts,
                    delay, ", reconciled first" if uncertain else "", redact(str(error)))
        with self.rt.engine.begin() as conn:
            values: dict[str, Any] = {} if uncertain else {"attempt_started_at": None}
            conn.execute(update(sends).where(sends.c.id == row.id).values(
                lease_owner=None, lease_until=None, last_error=redact(str(error))[:2000],
                available_at=utcnow() + timedelta(seconds=delay), **values))
            self._log(conn, row, "uncertain" if uncertain else "retry", started, error_code=error.code,
                      detail=str(error))

    def _dead(self, row: Row[Any], error: DeliveryError, started: float, *, exhausted: bool = False,
              uncertain: bool = False) -> None:
        if not exhausted:
            metrics.SEND_FAILURES.labels(row.channel, "permanent").inc()
        error_class = "exhausted" if exhausted else "permanent"
        log.error("send %s on %s dead-lettered (%s): %s", row.id, row.channel, error_class, redact(str(error)))
        if exhausted:
            text = (f"Not delivered: {row.channel} kept failing after {row.attempts} attempts ({error}). "
                    + ("The last attempt may have reached the customer; check before answering again. "
                       if uncertain else "")
                    + "An admin can retry it with `gateway dlq replay`.")
        elif isinstance(error, OutcomeUnknown):
            text = (f"Perhaps not delivered: an attempt on {row.channel} was interrupted and {error} It was not sent "
                    "again, so the customer gets it at most once; check with them before answering again.")
        else:
            text = f"Not delivered: {error}"
        with self.rt.engine.begin() as conn:
            if not uncertain:
                conn.execute(update(sends).where(sends.c.id == row.id).values(attempt_started_at=None))
            self.rt.queues.dead_letter(conn, stage="send", source_id=row.id, target=row.channel,
                                       error_class=error_class, reason=str(error), attempts=row.attempts,
                                       code=error.code)
            self._log(conn, row, "dead", started, error_code=error.code, detail=str(error))
            queue_note(conn, row.crm, row.conversation_id, f"send-{row.id}-dead-{row.attempts}", text)
        metrics.DEAD_LETTERED.labels("send", row.channel).inc()

    def _blocked(self, row: Row[Any], started: float, text: str) -> None:
        with self.rt.engine.begin() as conn:
            self.rt.queues.finish(conn, sends, row.id, "blocked", last_error=text, attempt_started_at=None)
            self._log(conn, row, "blocked", started, error_code="opted_out", detail=text)
            queue_note(conn, row.crm, row.conversation_id, f"send-{row.id}-blocked", text)

    def _log(self, conn: Any, row: Row[Any], outcome: str, started: float, **values: Any) -> None:
        conn.execute(send_log.insert().values(
            send_id=row.id, channel=row.channel, attempt=row.attempts, outcome=outcome,
            duration_ms=(time.monotonic() - started) * 1000, created_at=utcnow(), **values))


def _address(message: Message) -> str | None:
    """The customer's phone number, for opt-outs (which are kept per phone number and channel)."""
    for party in message.recipients:
        for identifier in party.identifiers:
            if identifier.kind.value == "phone":
                return identifier.value
    return None
