"""KPIs per channel and language, read from the database with SQL so that every process, and every restart, agrees.

A conversation belongs to the channel (type and configured connector) and language it was opened with; it counts in
the period in which the customer's first message arrived. Its first response time runs from that message to the
first agent reply written from a CRM (acknowledgements and surveys are the gateway's own words, not replies), its
resolution time to the moment a CRM first reported its ticket solved. Where a ``kpis:`` calendar applies to the
channel only its open seconds count. Percentiles are nearest-rank. A channel switch is a customer message on another
configured channel than the customer's previous message of the same conversation in the period, counted when it
arrives; messages are counted per configured channel when they arrive (not per language: that would cost a join per
message).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, and_, case, func, select, update

from gateway.storage.tables import (
    acknowledgements,
    conversations,
    dead_letters,
    inbox,
    messages,
    outbox,
    sends,
    surveys,
)

if TYPE_CHECKING:
    from gateway.calendars import BusinessCalendar
    from gateway.plugins import TicketStatus
    from gateway.yamlsource import ConfigIssue, YamlDocument

SOLVED = frozenset({"solved", "closed"})
UNKNOWN_LANGUAGE = "und"
UNKNOWN_CHANNEL = "other"  # messages of a connector none of whose conversations opened in the period


class KpisConfig(BaseModel):
    """The ``kpis:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    business_hours: str | None = Field(
        None, description="A `business_hours` calendar: first response and resolution times count only its open "
                          "seconds. Unset: every second counts.")
    channels: dict[str, str] = Field(
        {}, description="A calendar per channel instead of `business_hours`: {whatsapp-in: support-india}.")
    cache_seconds: float = Field(
        30, ge=0, description="How long /metrics reuses the KPIs it read from the database.")


def check_references(doc: YamlDocument, data: dict[str, Any]) -> list[ConfigIssue]:
    """The calendars and channels ``kpis:`` names exist."""
    section = data.get("kpis") if isinstance(data.get("kpis"), dict) else {}
    calendars = data.get("business_hours") if isinstance(data.get("business_hours"), dict) else {}
    channels = data.get("channels") if isinstance(data.get("channels"), dict) else {}
    issues = []
    default = section.get("business_hours")
    if default is not None and default not in calendars:
        issues.append(doc.issue(("kpis", "business_hours"), f"no business_hours calendar {default!r}"))
    for channel, calendar in (section.get("channels") or {}).items():
        if channel not in channels:
            issues.append(doc.issue(("kpis", "channels", channel), f"no channel named {channel!r}"))
        if calendar not in calendars:
            issues.append(doc.issue(("kpis", "channels", channel), f"no business_hours calendar {calendar!r}"))
    return issues


def record_solved(conn: Connection, statuses: Iterable[TicketStatus]) -> None:
    """Keep the first time a CRM reported each conversation's ticket solved (a reopened ticket keeps it)."""
    for status in statuses:
        if status.status in SOLVED:
            conn.execute(update(conversations).where(
                conversations.c.id == status.conversation_id, conversations.c.solved_at.is_(None))
                .values(solved_at=status.occurred_at))


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``share`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class OpenClock:
    """Open seconds of a calendar as a running total, so a difference of two totals is the business time between
    two moments; each day's total is computed once."""

    def __init__(self, calendar: BusinessCalendar) -> None:
        self.calendar = calendar
        self._anchor: date | None = None
        self._before: dict[date, float] = {}
        self._spans: dict[date, list[tuple[datetime, datetime]]] = {}

    def _spans_on(self, day: date) -> list[tuple[datetime, datetime]]:
        if day not in self._spans:
            self._spans[day] = self.calendar.spans_on(day)
        return self._spans[day]

    def _open_before(self, day: date) -> float:
        if self._anchor is None:
            self._anchor = day
        if day in self._before:
            return self._before[day]
        total, step = 0.0, self._anchor
        forward = day >= self._anchor
        while step != day:
            seconds = sum((closes - opens).total_seconds() for opens, closes in self._spans_on(
                step if forward else step - timedelta(days=1)))
            total += seconds if forward else -seconds
            step += timedelta(days=1 if forward else -1)
        self._before[day] = total
        return total

    def total(self, at: datetime) -> float:
        day = at.astimezone(self.calendar.zone).date()
        within = sum((min(closes, at) - opens).total_seconds()
                     for opens, closes in self._spans_on(day) if opens < at)
        return self._open_before(day) + within

    def between(self, start: datetime, end: datetime) -> float:
        return max(0.0, self.total(end) - self.total(start))


@dataclass
class Figures:
    """The KPIs of one channel (and language) in one period; the raw durations stay for merging groups."""

    conversations: int = 0
    messages_in: int = 0
    messages_out: int = 0
    first_responses: list[float] = field(default_factory=list)
    resolutions: list[float] = field(default_factory=list)
    switches: int = 0
    acknowledgements: int = 0
    survey_answers: int = 0
    rating_sum: int = 0

    def add(self, other: Figures) -> None:
        for name in ("conversations", "messages_in", "messages_out", "switches", "acknowledgements",
                     "survey_answers", "rating_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.first_responses += other.first_responses
        self.resolutions += other.resolutions

    def summary(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations, "messages_in": self.messages_in, "messages_out": self.messages_out,
            "answered": len(self.first_responses),
            "first_response_p50": percentile(self.first_responses, 0.5),
            "first_response_p90": percentile(self.first_responses, 0.9),
            "resolved": len(self.resolutions),
            "resolution_p50": percentile(self.resolutions, 0.5),
            "resolution_p90": percentile(self.resolutions, 0.9),
            "channel_switches": self.switches, "acknowledgements": self.acknowledgements,
            "satisfaction_answers": self.survey_answers,
            "satisfaction_average": round(self.rating_sum / self.survey_answers, 2) if self.survey_answers else None,
        }


Group = tuple[str, str, str]  # channel type, connector (configured channel name), language


@dataclass
class Report:
    """The KPIs of one period: per (channel type, channel name, language), plus dead letters and backlog."""

    start: datetime | None
    end: datetime
    groups: dict[Group, Figures] = field(default_factory=lambda: defaultdict(Figures))
    dead_letters: dict[str, int] = field(default_factory=dict)  # new in the period, per connector or CRM
    messages: dict[str, list[int]] = field(default_factory=dict)  # per connector: [inbound, outbound]
    # per (channel type, channel name) and UTC date the conversation opened: filled when compute(by_day=True)
    days: dict[tuple[str, str], dict[date, Figures]] = field(default_factory=dict)
    calendars: dict[str, str | None] = field(default_factory=dict)

    def by_channel(self) -> dict[tuple[str, str], Figures]:
        merged: dict[tuple[str, str], Figures] = defaultdict(Figures)
        for (channel, connector, _language), figures in self.groups.items():
            merged[(channel, connector)].add(figures)
        types = {connector: channel for channel, connector in merged}
        for connector, (inbound, outbound) in self.messages.items():
            figures = merged[(types.get(connector, UNKNOWN_CHANNEL), connector)]
            figures.messages_in += inbound
            figures.messages_out += outbound
        return dict(sorted(merged.items()))

    def total(self) -> Figures:
        merged = Figures()
        for figures in self.by_channel().values():
            merged.add(figures)
        return merged


@dataclass(frozen=True)
class Backlog:
    """The oldest row still waiting in each queue, per connector, CRM or channel: (queue, name) -> its time."""

    oldest: dict[tuple[str, str], datetime]

    def ages(self, now: datetime) -> dict[tuple[str, str], float]:
        return {key: max(0.0, (now - at).total_seconds()) for key, at in sorted(self.oldest.items())}


def calendar_for(config: KpisConfig, calendars: dict[str, BusinessCalendar], connector: str) -> BusinessCalendar | None:
    name = config.channels.get(connector, config.business_hours)
    return calendars.get(name) if name else None


Period = tuple[datetime | None, datetime]
# SQLite would rather scan every message in an index that spares it the GROUP BY's sort than read the period's
_BY_TIME = "INDEXED BY ix_messages_received_at"


def _in(column: Any, period: Period) -> Any:
    start, end = period
    return column < end if start is None else and_(column >= start, column < end)


def _span(column: Any, periods: Sequence[Period]) -> Any:
    starts = [start for start, _ in periods]
    return _in(column, (None if None in starts else min(s for s in starts if s is not None),
                        max(end for _, end in periods)))


def _language() -> Any:
    return conversations.c.language  # None is UNKNOWN_LANGUAGE: grouped by the column alone, as PostgreSQL wants


def compute(conn: Connection, periods: Sequence[Period], config: KpisConfig,
            calendars: dict[str, BusinessCalendar], *, by_day: bool = False) -> list[Report]:
    """One report per period (``start`` None: since the beginning); each table is read once for all periods.
    ``by_day`` also splits each report's conversations (count, first responses, resolutions) by the day they
    opened, for charts."""
    reports = [Report(start, end) for start, end in periods]
    clocks: dict[str, OpenClock | None] = {}

    def duration(connector: str, start: datetime, end: datetime) -> float:
        if connector not in clocks:
            calendar = calendar_for(config, calendars, connector)
            clocks[connector] = OpenClock(calendar) if calendar is not None else None
        clock = clocks[connector]
        return clock.between(start, end) if clock else max(0.0, (end - start).total_seconds())

    reply = (select(func.min(messages.c.received_at)).where(  # thread_rule "reply" is only ever outbound
        messages.c.conversation_id == conversations.c.id, messages.c.thread_rule == "reply").scalar_subquery())
    opened = select(conversations.c.channel, conversations.c.connector, _language(),
                    conversations.c.created_at, conversations.c.solved_at, reply.label("first_reply")).where(
        _span(conversations.c.created_at, periods))
    for channel, connector, language, created, solved, first_reply in conn.execute(opened):
        response = duration(connector, created, first_reply) if first_reply is not None else None
        resolution = duration(connector, created, solved) if solved is not None else None
        for report in reports:
            if not _contains(report, created):
                continue
            into = [report.groups[(channel, connector, language or UNKNOWN_LANGUAGE)]]
            if by_day:
                into.append(report.days.setdefault((channel, connector), defaultdict(Figures))[created.date()])
            for figures in into:
                figures.conversations += 1
                if response is not None:
                    figures.first_responses.append(response)
                if resolution is not None:
                    figures.resolutions.append(resolution)
    _switches(conn, periods, reports)
    _counted(conn, periods, reports)
    for report in reports:
        report.calendars = {connector: (calendar_for(config, calendars, connector) or _NoCalendar).name
                            for _channel, connector in report.by_channel()}
    return reports


class _NoCalendar:
    name = None


def _contains(report: Report, at: datetime) -> bool:
    return (report.start is None or at >= report.start) and at < report.end


def _sums(column: Any, periods: Sequence[Period]) -> list[Any]:
    return [func.sum(case((_in(column, period), 1), else_=0)) for period in periods]


def _switches(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
    inbound = (select(messages.c.conversation_id, messages.c.connector, messages.c.received_at,
                      func.lag(messages.c.connector).over(partition_by=messages.c.conversation_id,
                                                          order_by=messages.c.received_at).label("previous"))
               .where(messages.c.direction == "inbound", _span(messages.c.received_at, periods))
               .with_hint(messages, _BY_TIME, "sqlite").subquery())
    query = (select(conversations.c.channel, conversations.c.connector, _language(), *_sums(
        inbound.c.received_at, periods))
        .join(inbound, inbound.c.conversation_id == conversations.c.id)
        .where(inbound.c.previous.is_not(None), inbound.c.previous != inbound.c.connector)
        .group_by(conversations.c.channel, conversations.c.connector, _language()))
    for channel, connector, language, *counts in conn.execute(query):
        for report, count in zip(reports, counts, strict=True):
            if count:
                report.groups[(channel, connector, language or UNKNOWN_LANGUAGE)].switches += int(count)


def _counted(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
    """Messages (per configured channel, from the covering index alone), acknowledgements and survey answers by when
    they happened; dead letters by when they were made."""
    group = (conversations.c.channel, conversations.c.connector, _language())
    sent = messages.c.direction == "outbound"
    counted = (select(messages.c.connector, sent, *_sums(messages.c.received_at, periods))
               .where(_span(messages.c.received_at, periods)).with_hint(messages, _BY_TIME, "sqlite")
               .group_by(messages.c.connector, sent))
    for connector, outbound, *counts in conn.execute(counted):
        for report, count in zip(reports, counts, strict=True):
            if count:
                into = report.messages.setdefault(connector, [0, 0])
                into[1 if outbound else 0] += int(count)
    queries: list[tuple[str, Any]] = [
        ("acknowledgements", select(*group, *_sums(acknowledgements.c.acknowledged_at, periods))
         .select_from(acknowledgements).join(conversations, conversations.c.id == acknowledgements.c.conversation_id)
         .where(_span(acknowledgements.c.acknowledged_at, periods), acknowledgements.c.status == "sent")
         .group_by(*group)),
    ]
    for name, query in queries:
        for channel, connector, language, *counts in conn.execute(query):
            for report, count in zip(reports, counts, strict=True):
                if count:
                    figures = report.groups[(channel, connector, language or UNKNOWN_LANGUAGE)]
                    setattr(figures, name, getattr(figures, name) + int(count))
    answered = (select(*group, *_sums(surveys.c.answered_at, periods), *[
        func.sum(case((_in(surveys.c.answered_at, period), surveys.c.rating), else_=0)) for period in periods])
        .select_from(surveys).join(conversations, conversations.c.id == surveys.c.conversation_id)
        .where(_span(surveys.c.answered_at, periods), surveys.c.rating.is_not(None)).group_by(*group))
    for channel, connector, language, *values in conn.execute(answered):
        for index, report in enumerate(reports):
            if not values[index]:
                continue
            figures = report.groups[(channel, connector, language or UNKNOWN_LANGUAGE)]
            figures.survey_answers += int(values[index] or 0)
            figures.rating_sum += int(values[len(reports) + index] or 0)
    dead = (select(dead_letters.c.target, *_sums(dead_letters.c.created_at, periods))
            .where(_span(dead_letters.c.created_at, periods)).group_by(dead_letters.c.target))
    for target, *counts in conn.execute(dead):
        for report, count in zip(reports, counts, strict=True):
            if count:
                report.dead_letters[target] = int(count)


def open_dead_letters(conn: Connection) -> dict[str, int]:
    """Dead letters neither replayed nor discarded, per connector or CRM."""
    query = (select(dead_letters.c.target, func.count()).where(dead_letters.c.resolution.is_(None))
             .group_by(dead_letters.c.target))
    return {target: int(count) for target, count in conn.execute(query)}


def backlog(conn: Connection) -> Backlog:
    """The oldest waiting inbox row per connector, outbox row per CRM and send per channel."""
    oldest: dict[tuple[str, str], datetime] = {}
    for queue, name, at, status in (("inbox", inbox.c.connector, inbox.c.received_at, inbox.c.status),
                                    ("outbox", outbox.c.crm, outbox.c.created_at, outbox.c.status),
                                    ("sends", sends.c.channel, sends.c.created_at, sends.c.status)):
        for key, first in conn.execute(select(name, func.min(at)).where(status == "pending").group_by(name)):
            oldest[(queue, key)] = first
    return Backlog(oldest)
