"""Automatic acknowledgements: the first message of a new conversation is answered on its channel, once.

Order, and why: the text names the ticket (``{{ ticket.id }}``), and the ticket exists only once the CRM has the
message. So the pipeline decides, in the transaction that opens the conversation, whether the customer is to be
answered (a row in ``acknowledgements``, ``waiting``, or ``skipped`` with the reason); the delivery worker, in the
transaction that records the ticket written, renders the text and queues it as an outbound message on the send
queue (``queued``); the send worker, in the transaction that records it sent, queues the public comment that shows
the agent what the customer was told (``sent``). Each step is one durable, idempotent transition of that row, so the
acknowledgement goes out at most once (the send queue reconciles an uncertain attempt) and is never lost to a crash.

Never answered: auto-replies, bounces and list mail (``no_auto_answer``, set by the email normaliser), role and
no-reply addresses, customers who opted out, a customer acknowledged in the last ``repeat_after_hours``, and a
message whose ticket came later than ``max_delay_minutes`` (the CRM was down: the answer would no longer help).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jinja2 import TemplateError
from prometheus_client import Counter, Histogram
from sqlalchemy import Connection, Row, select, update

from gateway import routing
from gateway.ack_rules import AckRule, render, timing
from gateway.calendars import BusinessCalendar, build_calendars
from gateway.config import GatewayConfig
from gateway.identity.merges import customer_family
from gateway.model import (
    Direction,
    Identifier,
    IdentifierKind,
    Message,
    MessageKind,
    Party,
    RawRef,
    ThreadRef,
)
from gateway.notes import queue_note
from gateway.optouts import opted_out
from gateway.plugins import ReplySender
from gateway.storage.db import utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import acknowledgements, crm_links, customers, messages, sends

log = logging.getLogger(__name__)
AUTOMATIC = "acknowledgement"
ANSWERED = ("waiting", "queued", "sent")  # statuses that count as "acknowledged" for repeat_after_hours
_NO_REPLY = re.compile(r"^(no|do[-_.]?not)[-_.]?reply", re.IGNORECASE)

OUTCOMES = Counter("gateway_acknowledgements_total", "Automatic acknowledgements by outcome",
                   ["channel", "outcome"])
LATENCY = Histogram("gateway_acknowledgement_seconds",
                    "From the customer's message stored to the acknowledgement accepted by the provider", ["channel"],
                    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 1800))


@dataclass(frozen=True)
class Preview:
    """What a message would get (``gateway simulate --dry-run``): a text, or the reason it gets none."""

    rule: int | None
    crm: str | None
    language: str | None = None
    is_open: bool = True
    text: str | None = None
    reason: str | None = None


class Acknowledgements:
    """The ``acknowledgements:`` rules at work; one per worker, shared by nothing mutable."""

    def __init__(self, config: GatewayConfig, channels: Mapping[str, object],
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.rules = config.settings.acknowledgements
        self.channels = channels
        self.calendars = build_calendars(config.settings.business_hours)
        self.role_parts = {part.lower() for part in config.settings.identity.role_local_parts}
        self.clock = clock

    # -- which rule, and whether to answer -------------------------------------------------------------------------
    def rule_for(self, channel: str, route_names: set[str] | None = None) -> tuple[int, AckRule, str] | None:
        """The first rule for this channel (and the routes that took the message), with the CRM whose ticket it
        names; None when none applies."""
        for index, rule in enumerate(self.rules):
            if rule.applies_to(channel, route_names):
                routes = [r for r in self.config.routes_from(channel) if not rule.routes or r.name in rule.routes]
                crm = rule.crm or (routes[0].to if routes else None)
                return (index, rule, crm) if crm is not None else None
        return None

    def calendar(self, rule: AckRule) -> BusinessCalendar | None:
        return self.calendars.get(rule.business_hours) if rule.business_hours else None

    def refusal(self, message: Message) -> str | None:
        """Why this message is never answered automatically, from the message alone; None when it may be."""
        if message.direction is not Direction.INBOUND or message.kind is not MessageKind.MESSAGE:
            return "not a customer's message"
        robot = message.extras.get("no_auto_answer") or message.extras.get("auto_reply")
        if robot:
            return f"automated mail ({robot})"
        for identifier in message.sender.identifiers:
            if identifier.kind is IdentifierKind.EMAIL:
                local = identifier.value.rpartition("@")[0].lower().split("+")[0]
                if _NO_REPLY.match(local) or local in self.role_parts or re.sub(r"[-_.]", "", local) in self.role_parts:
                    return "role or no-reply address"
        return None

    def _stored_refusal(self, conn: Connection, message: Message, customer_id: str, rule: AckRule) -> str | None:
        phone = next((i.value for i in message.sender.identifiers if i.kind is IdentifierKind.PHONE), None)
        keyword = opted_out(conn, message.connector, phone)
        if keyword is not None:
            return f"opted out ({keyword})"
        if rule.repeat_after_hours:
            since = message.received_at - timedelta(hours=rule.repeat_after_hours)
            recent = conn.execute(select(acknowledgements.c.conversation_id).where(
                acknowledgements.c.customer_id.in_(customer_family(conn, customer_id)),
                acknowledgements.c.status.in_(ANSWERED), acknowledgements.c.acknowledged_at > since).limit(1)).first()
            if recent is not None:
                return f"acknowledged within the last {rule.repeat_after_hours:g} hours"
        return None

    def decide(self, conn: Connection, message: Message, customer_id: str, conversation_id: str,
               opened: bool, route_names: set[str] | None = None) -> None:
        """In the pipeline's transaction: a new conversation a rule answers waits for its ticket, or is skipped.
        ``route_names``: the names of the routes that took the message."""
        if not opened or not self.rules:
            return
        found = self.rule_for(message.connector, route_names)
        if found is None:
            return
        index, rule, crm = found
        reason = self.refusal(message) or self._stored_refusal(conn, message, customer_id, rule)
        now = self.clock()
        inserted = conn.execute(insert_for(conn.engine, acknowledgements).values(
            conversation_id=conversation_id, customer_id=customer_id, message_id=message.id,
            channel=message.connector, crm=crm, rule=index, status="skipped" if reason else "waiting", reason=reason,
            acknowledged_at=message.received_at, created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["conversation_id"]).returning(acknowledgements.c.status)).first()
        if inserted is not None:
            OUTCOMES.labels(message.connector, inserted.status).inc()
            if reason:
                log.info("%s: conversation %s not acknowledged: %s", message.connector, conversation_id, reason)

    # -- the text --------------------------------------------------------------------------------------------------
    def render(self, rule: AckRule, message: Message, *, ticket: dict[str, str], customer_name: str) -> Preview:
        """The rule's text for this message: its language, open or closed at the moment the customer wrote."""
        calendar = self.calendar(rule)
        times = timing(rule, calendar, message.received_at)
        language, template = rule.text_for(message.language, times["is_open"])
        context = {**times, "ticket": ticket, "customer": {"name": customer_name}, "channel": message.connector,
                   "channel_type": message.channel.value, "language": message.language or ""}
        return Preview(rule=self.rules.index(rule), crm=None, language=language, is_open=times["is_open"],
                       text=render(template, context))

    def preview(self, message: Message) -> Preview:
        """What ``message`` would get as the first message of a new conversation (nothing stored, nothing sent)."""
        identifiers = [(i.kind.value, i.value) for i in message.sender.identifiers]
        chosen = routing.choose(self.config, message, identifiers, set())
        names = {name for route in chosen for name in route.route["names"]}
        found = self.rule_for(message.connector, names)
        if found is None:
            return Preview(rule=None, crm=None, reason="no acknowledgement rule (with a route to a crm) for "
                                                       f"{message.connector!r}")
        index, rule, crm = found
        reason = self.refusal(message)
        if reason is not None:
            return Preview(rule=index, crm=crm, reason=reason)
        shown = self.render(rule, message, ticket={"id": "12345", "number": "12345"},
                            customer_name=message.sender.display_name or "")
        return Preview(rule=index, crm=crm, language=shown.language, is_open=shown.is_open, text=shown.text)

    # -- after the ticket is written -------------------------------------------------------------------------------
    def after_delivery(self, conn: Connection, crm: str, conversation_id: str) -> bool:
        """In the delivery's transaction: a waiting acknowledgement is rendered and queued; True when one was.

        Whatever goes wrong here is logged and leaves the acknowledgement waiting: the delivery is recorded anyway.
        """
        if not self.rules:
            return False
        try:
            with conn.begin_nested():
                return self._settle(conn, crm, conversation_id)
        except Exception:
            log.exception("acknowledgement of conversation %s could not be queued", conversation_id)
            return False

    def _settle(self, conn: Connection, crm: str, conversation_id: str) -> bool:
        ack = conn.execute(select(acknowledgements).where(
            acknowledgements.c.conversation_id == conversation_id, acknowledgements.c.crm == crm,
            acknowledgements.c.status == "waiting")).first()
        if ack is None:
            return False
        mine = acknowledgements.c.conversation_id == conversation_id
        # taken first (a second worker's update waits for this commit, then finds nothing waiting)
        if conn.execute(update(acknowledgements).where(mine, acknowledgements.c.status == "waiting").values(
                status="queued")).rowcount != 1:
            return False
        outcome, reason, outbound_id = self._queue(conn, ack)
        conn.execute(update(acknowledgements).where(mine).values(
            status=outcome, reason=reason, outbound_id=outbound_id, updated_at=self.clock()))
        OUTCOMES.labels(ack.channel, outcome).inc()
        if reason:
            log.warning("%s: conversation %s not acknowledged: %s", ack.channel, conversation_id, reason)
        return outcome == "queued"

    def _queue(self, conn: Connection, ack: Row[Any]) -> tuple[str, str | None, str | None]:
        stored = conn.execute(select(messages.c.data, messages.c.inbox_id).where(
            messages.c.id == ack.message_id)).first()
        if stored is None or ack.rule >= len(self.rules):
            return "failed", "the message or its acknowledgement rule is no longer there", None
        message = Message.model_validate(stored.data)
        rule = self.rules[ack.rule]
        late = self.clock() - message.received_at
        if late > timedelta(minutes=rule.max_delay_minutes):
            return "skipped", (f"the ticket was written {late.total_seconds() / 60:.0f} minutes after the message "
                               f"(over max_delay_minutes, {rule.max_delay_minutes:g})"), None
        if not isinstance(self.channels.get(ack.channel), ReplySender):
            return "skipped", f"channel {ack.channel!r} cannot send", None
        link = conn.execute(select(crm_links.c.remote_id, crm_links.c.data).where(
            crm_links.c.crm == ack.crm, crm_links.c.entity == "conversation",
            crm_links.c.local_id == ack.conversation_id)).first()
        ticket_id = link.remote_id if link is not None else ack.conversation_id  # a CRM without tickets (jsonl)
        number = str((link.data or {}).get("number") or ticket_id) if link is not None else ticket_id
        name = conn.execute(select(customers.c.display_name).where(customers.c.id == ack.customer_id)).scalar()
        try:
            shown = self.render(rule, message, ticket={"id": ticket_id, "number": number},
                                customer_name=name or message.sender.display_name or "")
        except TemplateError as exc:
            return "failed", f"acknowledgements[{ack.rule}]: {exc}", None
        if not shown.text:
            return "failed", f"acknowledgements[{ack.rule}]: the {shown.language} text is empty", None
        return "queued", None, self._insert(conn, ack, message, stored.inbox_id, shown)

    def _insert(self, conn: Connection, ack: Row[Any], answered: Message, inbox_id: int, shown: Preview) -> str:
        now = self.clock()
        outbound = Message(
            channel=answered.channel, connector=answered.connector, connector_type=answered.connector_type,
            direction=Direction.OUTBOUND, provider_message_id=f"ack:{ack.conversation_id}",
            thread=ThreadRef(in_reply_to=answered.thread.message_id,
                             provider_thread_id=answered.thread.provider_thread_id),
            sender=Party(identifiers=(Identifier(kind=IdentifierKind.AGENT, value=f"{ack.crm}:automatic"),)),
            recipients=(answered.sender,), text=shown.text or "", full_text=shown.text or "", sent_at=now,
            received_at=now, language=shown.language if shown.language != "default" else None,
            extras={"automatic": AUTOMATIC, "crm": ack.crm, "answers": ack.message_id, "rule": ack.rule,
                    "business_open": shown.is_open},
            raw=RawRef(inbox_id=inbox_id, connector=answered.connector))
        conn.execute(messages.insert().values(
            id=outbound.id, inbox_id=inbox_id, connector=outbound.connector,
            provider_message_id=outbound.provider_message_id, customer_id=ack.customer_id,
            conversation_id=ack.conversation_id, thread_rule="acknowledgement", direction=Direction.OUTBOUND.value,
            data=outbound.model_dump(mode="json"), received_at=now, created_at=now))
        conn.execute(sends.insert().values(
            message_id=outbound.id, channel=outbound.connector, conversation_id=ack.conversation_id, crm=ack.crm,
            status="pending", attempts=0, available_at=now, created_at=now))
        return outbound.id


def record_sent(conn: Connection, send: Row[Any], sent_at: datetime) -> bool:
    """In the send worker's transaction: an acknowledgement that went out is shown on the ticket as a public comment
    (``PublicComments``; an internal note where the CRM has none). True when the send was an acknowledgement."""
    ack = conn.execute(select(acknowledgements).where(acknowledgements.c.outbound_id == send.message_id)).first()
    if ack is None:
        return False
    text = conn.execute(select(messages.c.data).where(messages.c.id == send.message_id)).scalar_one()["text"]
    conn.execute(update(acknowledgements).where(acknowledgements.c.conversation_id == ack.conversation_id).values(
        status="sent", updated_at=sent_at))
    queue_note(conn, ack.crm, ack.conversation_id, f"ack-{ack.conversation_id}",
               f"Sent automatically to the customer on {ack.channel} (acknowledgement):\n\n{text}", public=True)
    OUTCOMES.labels(ack.channel, "sent").inc()
    stored_at = conn.execute(select(messages.c.received_at).where(messages.c.id == ack.message_id)).scalar()
    if isinstance(stored_at, datetime):
        LATENCY.labels(ack.channel).observe(max(0.0, (sent_at - stored_at).total_seconds()))
    return True
