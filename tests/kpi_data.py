"""A database with known KPIs: conversations on three channels in the week of Monday 2 March 2026 (UTC), with
agent replies, the gateway's own messages, a channel switch, solved tickets, acknowledgements, survey answers, dead
letters and a waiting inbox row. The answers are worked out in tests/test_kpis.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.calendars import BusinessCalendar, CalendarConfig
from gateway.kpis import KpiClock, KpisConfig, record_first_replies, record_inbound, record_solved
from gateway.plugins import TicketStatus
from gateway.storage.tables import (
    acknowledgements,
    conversations,
    customers,
    dead_letters,
    inbox,
    messages,
    surveys,
)

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
OFFICE = {"timezone": "UTC", "hours": {"mon-fri": ["09:00-17:00"]}}
CALENDARS = {"office": BusinessCalendar("office", CalendarConfig.model_validate(OFFICE))}
CONFIG = KpisConfig(channels={"sms-main": "office"})


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """``day`` 0 is Monday 2 March 2026."""
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


class Builder:
    def __init__(self, conn: Connection, clock: KpiClock) -> None:
        self.conn = conn
        self.clock = clock
        self.count = 0
        conn.execute(customers.insert().values(id="cust", created_at=MONDAY, updated_at=MONDAY))
        self.inbox_id = self._inbox("seed", MONDAY, "done")

    def _inbox(self, connector: str, received: datetime, status: str) -> int:
        self.count += 1
        return int(self.conn.execute(inbox.insert().values(
            connector=connector, provider_id=f"p{self.count}", kind="message", content_type="text/plain", headers={},
            body=b"", public_url="https://gw.example.com", received_at=received, status=status, attempts=0,
            available_at=received)).inserted_primary_key[0])

    def conversation(self, cid: str, channel: str, connector: str, language: str | None, opened: datetime,
                     solved: datetime | None = None) -> None:
        self.conn.execute(conversations.insert().values(
            id=cid, customer_id="cust", channel=channel, connector=connector, status="open", created_at=opened,
            last_activity_at=opened, language=language))
        self.message(cid, connector, "inbound", "new", opened)
        if solved is not None:  # as the pipeline records a CRM's status event
            record_solved(self.conn, [TicketStatus(cid, "solved", solved)], self.clock)

    def message(self, cid: str, connector: str, direction: str, rule: str, received: datetime) -> None:
        """Stored as the pipeline stores it: a customer's message after its channel switch is counted, an agent's
        reply followed by the first response time."""
        self.count += 1
        if direction == "inbound" and rule != "new":
            record_inbound(self.conn, cid, connector, received)
        self.conn.execute(messages.insert().values(
            id=f"m{self.count:04d}", inbox_id=self.inbox_id, connector=connector, provider_message_id=f"pm{self.count}",
            customer_id="cust", conversation_id=cid, thread_rule=rule, direction=direction, data={},
            received_at=received, created_at=received))
        if rule == "reply":
            record_first_replies(self.conn, [cid], self.clock)

    def reply(self, cid: str, connector: str, received: datetime) -> None:
        self.message(cid, connector, "outbound", "reply", received)

    def ack(self, cid: str, connector: str, status: str, when: datetime) -> None:
        self.conn.execute(acknowledgements.insert().values(
            conversation_id=cid, customer_id="cust", message_id="m", channel=connector, crm="zd", rule=0,
            status=status, acknowledged_at=when, created_at=when, updated_at=when))
        if status == "sent":
            self.message(cid, connector, "outbound", "acknowledgement", when + timedelta(seconds=1))

    def survey(self, cid: str, connector: str, rating: int, answered: datetime) -> None:
        self.conn.execute(surveys.insert().values(
            crm="zd", conversation_id=cid, customer_id="cust", channel=connector, rule="csat", status="written",
            asked_at=answered - timedelta(hours=1), answered_at=answered, rating=rating, attempts=1,
            available_at=answered))

    def dead_letter(self, target: str, created: datetime, resolution: str | None = None) -> None:
        self.conn.execute(dead_letters.insert().values(
            stage="pipeline", source_id=1, target=target, error_class="permanent", reason="bad", attempts=1,
            created_at=created, resolution=resolution))

    def waiting(self, connector: str, received: datetime) -> None:
        self._inbox(connector, received, "pending")


def build(conn: Connection, clock: KpiClock | None = None) -> dict[str, Any]:
    b = Builder(conn, clock or KpiClock(CONFIG, CALENDARS))
    # the week before: counted in no report of the week
    b.conversation("c0", "sms", "sms-main", "en", at(-3, 10))
    b.reply("c0", "sms-main", at(-3, 11))
    # sms-main counts open seconds of the office calendar (Mon-Fri 09:00-17:00 UTC)
    b.conversation("c1", "sms", "sms-main", "en", at(0, 10), solved=at(0, 12))
    b.ack("c1", "sms-main", "sent", at(0, 10))
    b.message("c1", "sms-main", "inbound", "continuity", at(0, 10, 5))
    b.reply("c1", "sms-main", at(0, 10, 10))  # 600 s
    b.reply("c1", "sms-main", at(0, 10, 20))  # a second reply changes nothing
    b.conversation("c2", "sms", "sms-main", "en", at(0, 16, 50))
    b.ack("c2", "sms-main", "skipped", at(0, 16, 50))
    b.reply("c2", "sms-main", at(1, 9, 20))  # 10 open minutes on Monday, 20 on Tuesday: 1800 s
    b.conversation("c3", "sms", "sms-main", "en", at(1, 11))
    b.reply("c3", "sms-main", at(1, 12))  # 3600 s
    b.conversation("c4", "sms", "sms-main", "en", at(2, 9))  # never answered
    b.conversation("c5", "sms", "sms-main", "es", at(0, 10))
    b.reply("c5", "sms-main", at(0, 11))  # 3600 s
    # wa has no calendar: wall-clock seconds
    b.conversation("w1", "whatsapp", "wa", "en", at(5, 12))
    b.message("w1", "sms-main", "inbound", "continuity", at(5, 12, 5))  # switch 1
    b.message("w1", "wa", "inbound", "continuity", at(5, 12, 10))  # switch 2
    b.message("w1", "wa", "inbound", "continuity", at(5, 12, 15))
    b.reply("w1", "wa", at(5, 12, 30))  # 1800 s
    b.conversation("w2", "whatsapp", "wa", None, at(6, 10))
    b.reply("w2", "wa", at(7, 10))  # 86400 s, the reply after the week
    b.survey("c1", "sms-main", 5, at(0, 13))
    b.survey("w1", "wa", 4, at(5, 14))
    b.dead_letter("sms-main", at(1, 8))
    b.dead_letter("sms-main", at(1, 9), resolution="replayed")
    b.dead_letter("zd", at(-2, 9))
    b.waiting("wa", at(6, 23))
    return {"inbox_id": b.inbox_id}
