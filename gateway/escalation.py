"""Escalation: a customer left without an agent's reply for N business minutes gets the ticket escalated, once.

The state lives in ``sla_clocks``, never in memory. The pipeline starts a clock when a customer's message arrives
and none is running for the rule and conversation (so the clock measures from the first unanswered message); an
agent's reply stops it; the next customer message after a reply starts a new one. The worker's scheduler job
(``EscalationRunner.run_due``) claims due clocks with a conditional update, so however many worker processes share
the database, each clock is escalated by one of them. A claim is a lease: a worker that dies while escalating leaves
the clock to be taken over once the lease runs out, and the steps it finished are recorded, so the CRM is updated
again at most (an idempotent change) and the notification is never posted twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Row, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway import metrics
from gateway.calendars import BusinessCalendar, build_calendars
from gateway.errors import as_delivery_error
from gateway.model import Message, MessageKind
from gateway.plugins import AgentReply, Escalation, TicketEscalation
from gateway.redact import redact
from gateway.sla_config import EscalationRule
from gateway.storage.db import is_sqlite, utcnow
from gateway.storage.links import DbLinkStore
from gateway.storage.prepared import Prepared
from gateway.storage.tables import sla_clocks

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger(__name__)
CHECK_SECONDS = 15.0  # how often the worker looks for due clocks (and survey answers to write back)
LEASE = timedelta(minutes=5)
# The CRM's clock and ours differ a little: a reply stamped this much before the customer's message still answers it.
CLOCK_SKEW = timedelta(minutes=2)
MAX_ATTEMPTS = 8


def due_at(rule: EscalationRule, calendars: dict[str, BusinessCalendar], started: datetime) -> datetime | None:
    """When a clock started at ``started`` runs out; None when the calendar never opens again."""
    if rule.calendar is None:
        return started + timedelta(minutes=rule.after_minutes)
    return calendars[rule.calendar].add_business_minutes(started, rule.after_minutes)


# -- the clocks (called inside the pipeline's transaction) ---------------------------------------------------------
_START_CLOCK = {  # by whether the engine is SQLite: each dialect's own INSERT ... ON CONFLICT
    True: Prepared(sqlite.insert(sla_clocks).on_conflict_do_nothing(index_elements=["open_key"])),
    False: Prepared(postgresql.insert(sla_clocks).on_conflict_do_nothing(index_elements=["open_key"]))}


def start_clocks(conn: Connection, rules: list[EscalationRule], calendars: dict[str, BusinessCalendar],
                 message: Message, conversation_id: str) -> int:
    """A customer's message: start each matching rule's clock unless one already runs for the conversation.

    Edits, deletions, reactions and auto-replies (out of office, bounces) wait for nobody and start none."""
    if message.kind is not MessageKind.MESSAGE or message.extras.get("auto_reply"):
        return 0
    started = 0
    now = utcnow()
    channel, received_at = message.connector, message.received_at
    for rule in rules:
        if rule.channels and channel not in rule.channels:
            continue
        due = due_at(rule, calendars, received_at)
        if due is None:
            log.warning("escalation %s: calendar %s never opens again; no clock started", rule.name, rule.calendar)
            continue
        inserted = _START_CLOCK[is_sqlite(conn.engine)].execute(conn, {
            "rule": rule.name, "conversation_id": conversation_id, "channel": channel,
            "open_key": f"{rule.name}:{conversation_id}", "status": "waiting", "started_at": received_at,
            "due_at": due, "attempts": 0, "available_at": due, "created_at": now})
        started += max(inserted.rowcount, 0)
    return started


def stop_clocks(conn: Connection, replies: list[AgentReply]) -> int:
    """Agents answered: the running clocks of their conversations stop (the customer's newer messages excepted)."""
    stopped = 0
    for reply in replies:
        result = conn.execute(update(sla_clocks).where(
            sla_clocks.c.conversation_id == reply.conversation_id, sla_clocks.c.open_key.is_not(None),
            sla_clocks.c.started_at <= reply.created_at + CLOCK_SKEW,
        ).values(open_key=None, answered_at=reply.created_at,
                 status=case((sla_clocks.c.status == "waiting", "answered"), else_=sla_clocks.c.status)))
        stopped += result.rowcount or 0
    return stopped


# -- notices ---------------------------------------------------------------------------------------------------------
@runtime_checkable
class NoticePoster(Protocol):
    """A channel that can post a notice for the team (the ``slack`` channel)."""

    def post_notice(self, channel: str, text: str) -> str: ...


def send_email_notice(channel: Any, to: list[str], subject: str, text: str) -> None:
    """Mail the notice through ``channel``'s SMTP settings, marked as automatic (RFC 3834)."""
    from gateway.mail.smtp import _quit, connect

    settings = channel.smtp_settings()
    if settings is None:
        raise LookupError(f"channel {channel.name!r} has no smtp settings")
    sender = settings.from_address or settings.username
    if not sender:
        raise LookupError(f"channel {channel.name!r} has no smtp from_address or username to send from")
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, ", ".join(to), subject
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(text)
    session = connect(settings, channel.context.base_dir)
    try:
        session.send_message(mail)
    finally:
        _quit(session)


# -- the runner (the worker's scheduler job) -------------------------------------------------------------------------
class EscalationRunner:
    """Finds due clocks, claims each with a conditional update and escalates it."""

    def __init__(self, runtime: Runtime, owner: str) -> None:
        self.rt = runtime
        self.owner = owner
        self.rules = {rule.name: rule for rule in runtime.config.settings.escalations}
        self.calendars = build_calendars(runtime.config.settings.business_hours)

    def run_due(self, now: datetime | None = None, limit: int = 50) -> int:
        """Escalate what is due at ``now``; how many clocks were escalated."""
        now = now or utcnow()
        with self.rt.engine.connect() as conn:
            due = list(conn.execute(select(sla_clocks.c.id).where(self._claimable(now))
                                    .order_by(sla_clocks.c.due_at).limit(limit)).scalars())
        done = 0
        for clock_id in due:
            row = self._claim(clock_id, now)
            if row is not None:
                done += self._escalate(row, now)
        return done

    def _claimable(self, now: datetime) -> Any:
        return (sla_clocks.c.open_key.is_not(None) & (sla_clocks.c.due_at <= now)
                & (sla_clocks.c.available_at <= now)
                & or_(sla_clocks.c.status == "waiting",
                      (sla_clocks.c.status == "escalating") & (sla_clocks.c.lease_until < now)))

    def _claim(self, clock_id: int, now: datetime) -> Row[Any] | None:
        """The clock, if this worker won it (one UPDATE: the second of two racing workers changes no row)."""
        with self.rt.engine.begin() as conn:
            claimed = conn.execute(update(sla_clocks).where(sla_clocks.c.id == clock_id, self._claimable(now))
                                   .values(status="escalating", lease_owner=self.owner, lease_until=now + LEASE,
                                           attempts=sla_clocks.c.attempts + 1))
            if claimed.rowcount != 1:
                return None
            return conn.execute(select(sla_clocks).where(sla_clocks.c.id == clock_id)).one()

    def _set(self, clock_id: int, **values: Any) -> None:
        with self.rt.engine.begin() as conn:
            conn.execute(update(sla_clocks).where(sla_clocks.c.id == clock_id, sla_clocks.c.lease_owner == self.owner)
                         .values(**values))

    def _escalate(self, row: Row[Any], now: datetime) -> int:
        rule = self.rules.get(row.rule)
        if rule is None:
            self._set(row.id, status="failed", lease_owner=None, lease_until=None,
                      last_error=f"rule {row.rule!r} is no longer configured")
            return 0
        tickets: list[str] = []
        if row.crm_done_at is None:
            tickets, error = self._update_crms(row, rule)
            if error is not None:
                retry = self.rt.retry_policy.next_delay(row.attempts, error) if error.retryable else None
                if retry is not None and row.attempts < MAX_ATTEMPTS:
                    log.warning("escalation %s of conversation %s: CRM update failed (retry in %.0fs): %s",
                                rule.name, row.conversation_id, retry, redact(str(error)))
                    self._set(row.id, status="waiting", lease_owner=None, lease_until=None,
                              available_at=now + timedelta(seconds=retry), last_error=redact(str(error))[:2000])
                    return 0
                log.error("escalation %s of conversation %s: CRM update failed for good: %s", rule.name,
                          row.conversation_id, redact(str(error)))
            self._set(row.id, crm_done_at=now, last_error=redact(str(error))[:2000] if error else None)
        if row.notify_started_at is None:
            self._set(row.id, notify_started_at=now)  # recorded first: a notice is never posted twice
            self._notify(row, rule, tickets)
        self._set(row.id, status="escalated", escalated_at=now, lease_owner=None, lease_until=None)
        metrics.ESCALATIONS.labels(rule.name).inc()
        log.info("escalation %s: conversation %s escalated", rule.name, row.conversation_id)
        return 1

    def _describe_wait(self, rule: EscalationRule) -> str:
        minutes = f"{rule.after_minutes:g}"
        if rule.calendar is None:
            return f"{minutes} minutes"
        return f"{minutes} business minutes ({self.calendars[rule.calendar].describe()})"

    def _update_crms(self, row: Row[Any], rule: EscalationRule) -> tuple[list[str], Any]:
        """Escalate the ticket in each CRM the conversation's channel is routed to; the first failure, if any."""
        note = (f"Escalated by the channel gateway (rule {rule.name}): the customer has waited over "
                f"{self._describe_wait(rule)} since {row.started_at:%Y-%m-%d %H:%M} UTC without an agent reply.")
        escalation = Escalation(key=f"gw-escalation-{row.id}", note=note, priority=rule.priority,
                                tags=tuple(rule.tags), group=rule.group)
        tickets: list[str] = []
        first_error = None
        for route in self.rt.config.routes_from(row.channel):
            crm = self.rt.crms.get(route.to)
            if not isinstance(crm, TicketEscalation):
                continue
            links = DbLinkStore(self.rt.engine, route.to, self.rt.directories.get(route.to))
            try:
                tickets.append(f"{route.to}: {crm.escalate(row.conversation_id, escalation, links)}")
            except Exception as exc:
                first_error = first_error or as_delivery_error(exc)
        return tickets, first_error

    def _notify(self, row: Row[Any], rule: EscalationRule, tickets: list[str]) -> None:
        text = (f"Escalation ({rule.name}): a customer on {row.channel} has waited over {self._describe_wait(rule)} "
                f"for an agent reply (conversation {row.conversation_id}, first unanswered message "
                f"{row.started_at:%Y-%m-%d %H:%M} UTC).")
        changes = [f"priority raised to {rule.priority}" if rule.priority else "",
                   f"tagged {', '.join(rule.tags)}" if rule.tags else "", f"group {rule.group}" if rule.group else ""]
        if any(changes):
            text += " Ticket: " + "; ".join(c for c in changes if c) + "."
        if tickets:
            text += " " + " ".join(tickets)
        problems = []
        if rule.notify.slack is not None:
            channel = self.rt.channels.get(rule.notify.slack.via)
            try:
                if not isinstance(channel, NoticePoster):
                    raise LookupError(f"channel {rule.notify.slack.via!r} cannot post notices")
                channel.post_notice(rule.notify.slack.channel, text)
            except Exception as exc:
                problems.append(f"slack: {as_delivery_error(exc)}")
        if rule.notify.email is not None:
            try:
                channel = self.rt.channels[rule.notify.email.via]
                send_email_notice(channel, rule.notify.email.to, f"Escalation: {rule.name}", text)
            except Exception as exc:
                problems.append(f"email: {as_delivery_error(exc)}")
        if problems:  # not retried: an interrupted notice may have gone out, and must not go twice
            log.error("escalation %s of conversation %s: notice failed: %s", rule.name, row.conversation_id,
                      redact("; ".join(problems)))
            self._set(row.id, last_error=redact("; ".join(problems))[:2000])

