"""Satisfaction surveys: a solved ticket's customer is asked for a 1-5 rating, once; the answer goes to the CRM.

The CRM reports a ticket solved through its stored events (``TicketStatuses``); the pipeline then queues the
question as an outbound message in the conversation, on the channel the customer last wrote from, through the send
queue like an agent's reply (with quick-reply choices where the channel has them). The customer's next message on
that channel within the rule's window that starts with a rating is the answer: it is kept in the conversation but not
delivered to the CRM as a new support message; text after the rating is the comment. The worker's scheduler job
writes answers back (``SatisfactionRatings``), claiming each with a conditional update.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, bindparam, or_, select, update

from gateway import metrics
from gateway.errors import as_delivery_error
from gateway.model import Direction, Identifier, IdentifierKind, Message, Party, RawRef, ThreadRef
from gateway.plugins import Rating, ReplySender, SatisfactionRatings, TicketStatus, TicketStatuses
from gateway.redact import redact
from gateway.replies import crm_inbox_name, last_inbound
from gateway.sla_config import SurveyRule
from gateway.storage.db import utcnow
from gateway.storage.links import DbLinkStore
from gateway.storage.prepared import Prepared
from gateway.storage.queues import insert_for
from gateway.storage.tables import messages, sends, surveys

if TYPE_CHECKING:
    from gateway.records import RawRecord
    from gateway.runtime import Runtime

log = logging.getLogger(__name__)
CHOICES = ("1", "2", "3", "4", "5")
SOLVED = frozenset({"solved", "closed"})
LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 8
_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_STARS = "\u2b50\u2605"  # ⭐ ★
# a rating at the start: a digit or a number word, perhaps "/5", "out of 5" or "stars"
_RATING = re.compile(r"^([1-5]|one|two|three|four|five)\b[ \t]*(/\s*5\b|out of 5\b|stars?\b)?(.*)$",
                     re.DOTALL | re.IGNORECASE)
_SEPARATORS = "-.,:;!)\n"


def parse_rating(text: str) -> tuple[int, str] | None:
    """A rating at the start of ``text`` (``4``, ``4/5``, ``4️⃣``, ``⭐⭐⭐⭐``, ``four``) and the rest as comment."""
    text = unicodedata.normalize("NFKC", text or "").replace("\ufe0f", "").replace("\u20e3", "").strip()
    if not text:
        return None
    stars = len(text) - len(text.lstrip(_STARS + " "))
    count = sum(1 for char in text[:stars] if char in _STARS)
    if 1 <= count <= 5 and (len(text) == stars or not text[stars].isdigit()):
        return count, text[stars:].strip(_SEPARATORS + " \t")
    match = _RATING.match(text)
    if match is None:
        return None
    value, unit, rest = match.group(1).lower(), match.group(2), match.group(3)
    # a bare number must stand alone or before punctuation: "2 more questions" is no rating, "4.5" neither
    tail = rest.lstrip(" \t")
    if not unit and tail and (tail[0] not in _SEPARATORS or re.match(r"^[.,]\d", tail)):
        return None
    return int(_WORDS.get(value, value)), rest.strip(_SEPARATORS + " \t")


def read_statuses(crm: object, records: list[RawRecord], links: Any) -> list[TicketStatus]:
    """The ticket status changes stored CRM events carry (none from a CRM without the ability)."""
    if not isinstance(crm, TicketStatuses):
        return []
    return [status for record in records for status in crm.ticket_statuses(record, links)]


def _rule_for(rules: list[SurveyRule], crm: str, channel: str) -> SurveyRule | None:
    return next((rule for rule in rules if (not rule.crms or crm in rule.crms)
                 and (not rule.channels or channel in rule.channels)), None)


def ask(conn: Connection, rules: list[SurveyRule], channels: dict[str, object], crm: str, inbox_id: int,
        statuses: list[TicketStatus]) -> int:
    """Queue the question for each newly solved ticket (once per ticket); how many were queued."""
    asked = 0
    for status in statuses:
        if status.status not in SOLVED:
            continue
        answered = last_inbound(conn, status.conversation_id)
        if answered is None:
            continue
        rule = _rule_for(rules, crm, answered.connector)
        if rule is None or not isinstance(channels.get(answered.connector), ReplySender):
            continue
        now = utcnow()
        survey_id = conn.execute(insert_for(conn.engine, surveys).values(
            crm=crm, conversation_id=status.conversation_id, customer_id=answered.customer_id,
            channel=answered.connector, rule=rule.name, status="asked", asked_at=now, attempts=0, available_at=now)
            .on_conflict_do_nothing(index_elements=["crm", "conversation_id"]).returning(surveys.c.id)).scalar()
        if survey_id is None:
            continue  # asked already: a ticket solved, reopened and solved again is asked once
        customer_message = Message.model_validate(answered.data)
        text = rule.text.get(customer_message.language or "", rule.text["default"])
        message_id = _queue_question(conn, crm, inbox_id, status.conversation_id, answered, customer_message, text,
                                     now)
        conn.execute(update(surveys).where(surveys.c.id == survey_id).values(message_id=message_id))
        metrics.SURVEYS_ASKED.labels(answered.connector).inc()
        asked += 1
    return asked


def _queue_question(conn: Connection, crm: str, inbox_id: int, conversation_id: str, answered: Row[Any],
                    customer_message: Message, text: str, now: datetime) -> str:
    """The question as an outbound message in the conversation, and its send."""
    provider_id = f"{crm}:survey:{conversation_id}"
    outbound = Message(
        channel=customer_message.channel, connector=customer_message.connector,
        connector_type=customer_message.connector_type, direction=Direction.OUTBOUND, provider_message_id=provider_id,
        thread=ThreadRef(in_reply_to=customer_message.thread.message_id,
                         provider_thread_id=customer_message.thread.provider_thread_id),
        sender=Party(identifiers=(Identifier(kind=IdentifierKind.AGENT, value=f"{crm}:survey"),)),
        recipients=(customer_message.sender,), text=text, full_text=text, sent_at=now, received_at=now,
        extras={"crm": crm, "automated": "survey", "quick_replies": list(CHOICES), "answers": answered.id},
        raw=RawRef(inbox_id=inbox_id, connector=crm_inbox_name(crm)))
    conn.execute(messages.insert().values(
        id=outbound.id, inbox_id=inbox_id, connector=outbound.connector, provider_message_id=provider_id,
        customer_id=answered.customer_id, conversation_id=conversation_id, thread_rule="survey",
        direction=Direction.OUTBOUND.value, data=outbound.model_dump(mode="json"), received_at=now, created_at=now))
    conn.execute(sends.insert().values(
        message_id=outbound.id, channel=outbound.connector, conversation_id=conversation_id, crm=crm,
        status="pending", attempts=0, available_at=now, created_at=now))
    return outbound.id


_PENDING_SURVEY = Prepared(select(surveys).where(
    surveys.c.customer_id == bindparam("customer_id"), surveys.c.channel == bindparam("channel"),
    surveys.c.status == "asked", surveys.c.asked_at <= bindparam("at")).order_by(surveys.c.asked_at.desc()).limit(1))


def take_answer(conn: Connection, rules: list[SurveyRule], message: Message, customer_id: str) -> bool:
    """True when ``message`` answers a pending survey of its customer on its channel (then it is not a support
    message); the rating and comment are recorded for the write-back."""
    if not rules:
        return False
    parsed = parse_rating(message.text or message.full_text or "")
    if parsed is None:
        return False
    windows = {rule.name: timedelta(hours=rule.window_hours) for rule in rules}
    pending = _PENDING_SURVEY.first(conn, {"customer_id": customer_id, "channel": message.connector,
                                           "at": message.received_at})
    if pending is None or message.received_at - pending.asked_at > windows.get(pending.rule, timedelta(0)):
        return False
    rating, comment = parsed
    taken = conn.execute(update(surveys).where(surveys.c.id == pending.id, surveys.c.status == "asked").values(
        status="answered", rating=rating, comment=comment[:4000] or None, answered_at=message.received_at,
        answer_message_id=message.id, available_at=utcnow()))
    return taken.rowcount == 1


class RatingWriter:
    """Writes answered surveys back to their CRM, each claimed by one worker with a conditional update."""

    def __init__(self, runtime: Runtime, owner: str) -> None:
        self.rt = runtime
        self.owner = owner
        self.rules = {rule.name: rule for rule in runtime.config.settings.surveys}

    def _claimable(self, now: datetime) -> Any:
        return (surveys.c.available_at <= now) & or_(
            surveys.c.status == "answered", (surveys.c.status == "writing") & (surveys.c.lease_until < now))

    def run_due(self, now: datetime | None = None, limit: int = 50) -> int:
        now = now or utcnow()
        with self.rt.engine.connect() as conn:
            due = list(conn.execute(select(surveys.c.id).where(self._claimable(now)).limit(limit)).scalars())
        written = 0
        for survey_id in due:
            with self.rt.engine.begin() as conn:
                claimed = conn.execute(update(surveys).where(surveys.c.id == survey_id, self._claimable(now)).values(
                    status="writing", lease_owner=self.owner, lease_until=now + LEASE,
                    attempts=surveys.c.attempts + 1))
                if claimed.rowcount != 1:
                    continue
                row = conn.execute(select(surveys).where(surveys.c.id == survey_id)).one()
            if row.attempts == 1:
                metrics.SURVEY_RATINGS.labels(row.channel, str(row.rating)).inc()
            written += self._write(row, now)
        return written

    def _finish(self, row: Row[Any], **values: Any) -> None:
        with self.rt.engine.begin() as conn:
            conn.execute(update(surveys).where(surveys.c.id == row.id, surveys.c.lease_owner == self.owner)
                         .values(lease_owner=None, lease_until=None, **values))

    def _write(self, row: Row[Any], now: datetime) -> int:
        crm = self.rt.crms.get(row.crm)
        rule = self.rules.get(row.rule)
        if not isinstance(crm, SatisfactionRatings) or rule is None:
            self._finish(row, status="failed", last_error=f"crm {row.crm!r} takes no ratings, or the survey rule "
                                                          f"{row.rule!r} is gone")
            return 0
        rating = Rating(key=f"gw-csat-{row.id}", rating=row.rating, comment=row.comment or "", field=rule.field,
                        comment_field=rule.comment_field, tags=rule.tags)
        links = DbLinkStore(self.rt.engine, row.crm, self.rt.directories.get(row.crm))
        try:
            crm.record_rating(row.conversation_id, rating, links)
        except Exception as exc:
            error = as_delivery_error(exc)
            delay = self.rt.retry_policy.next_delay(row.attempts, error) if error.retryable else None
            if delay is None or row.attempts >= MAX_ATTEMPTS:
                log.error("survey %s: rating not written to %s: %s", row.id, row.crm, redact(str(error)))
                self._finish(row, status="failed", last_error=redact(str(error))[:2000])
            else:
                self._finish(row, status="answered", available_at=now + timedelta(seconds=delay),
                             last_error=redact(str(error))[:2000])
            return 0
        self._finish(row, status="written", written_at=now, last_error=None)
        return 1
