"""KPIs per channel and language, read from the database with SQL so that every process, and every restart, agrees.

A conversation belongs to the channel (type and configured connector) and language it was opened with, and counts in
the period in which the customer's first message arrived. Its durations are measured once, when they end, and kept
on the conversation: the first response time runs from that message to the first agent reply written from a CRM
(acknowledgements and surveys are the gateway's own words, not replies), the resolution time to the moment a CRM
first reported its ticket solved; where a ``kpis:`` calendar applies to the channel only its open seconds count.
Percentiles are nearest-rank. A channel switch is a customer message on another configured channel than their
previous message in the same conversation, counted with the conversation. Messages are counted per configured
channel when they arrive (not per language: that would cost a join per message).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, and_, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.storage.tables import (
    acknowledgements,
    conversations,
    dead_letters,
    inbox,
    kpi_counted,
    kpi_totals,
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


class KpiClock:
    """Measures a conversation's durations when they end (in the calendar that applies to its channel then), so
    reading the KPIs is a scan of stored numbers, however many conversations there are."""

    def __init__(self, config: KpisConfig, calendars: dict[str, BusinessCalendar]) -> None:
        self.config = config
        self.calendars = calendars

    @classmethod
    def for_settings(cls, settings: Any) -> KpiClock:
        from gateway.calendars import build_calendars

        return cls(settings.kpis, build_calendars(settings.business_hours))

    def seconds(self, connector: str, start: datetime, end: datetime) -> float:
        calendar = calendar_for(self.config, self.calendars, connector)
        if calendar is None:
            return max(0.0, (end - start).total_seconds())
        return calendar.business_seconds_between(start, end)


def _opened(conn: Connection, conversation_id: str) -> Any:
    return conn.execute(select(conversations.c.connector, conversations.c.created_at).where(
        conversations.c.id == conversation_id)).first()


def record_solved(conn: Connection, statuses: Iterable[TicketStatus], clock: KpiClock) -> None:
    """Keep the first time a CRM reported each conversation's ticket solved (a reopened ticket keeps it) and the
    resolution time to it."""
    for status in statuses:
        if status.status not in SOLVED:
            continue
        opened = _opened(conn, status.conversation_id)
        if opened is None:
            continue
        conn.execute(update(conversations).where(
            conversations.c.id == status.conversation_id, conversations.c.solved_at.is_(None))
            .values(solved_at=status.occurred_at,
                    resolution_seconds=clock.seconds(opened.connector, opened.created_at, status.occurred_at)))


def record_first_replies(conn: Connection, conversation_ids: Iterable[str], clock: KpiClock) -> None:
    """After agent replies were stored: the first one's time and the first response time, once per conversation."""
    for conversation_id in set(conversation_ids):
        opened = _opened(conn, conversation_id)
        first = conn.execute(select(func.min(messages.c.received_at)).where(
            messages.c.conversation_id == conversation_id, messages.c.thread_rule == "reply")).scalar()
        if opened is None or first is None:
            continue
        conn.execute(update(conversations).where(
            conversations.c.id == conversation_id, conversations.c.first_reply_at.is_(None))
            .values(first_reply_at=first,
                    first_response_seconds=clock.seconds(opened.connector, opened.created_at, first)))


# built once: these run for every customer message of a continuing conversation
_PREVIOUS_CHANNEL = select(messages.c.connector).where(
    messages.c.conversation_id == bindparam("conversation_id"), messages.c.direction == "inbound",
    messages.c.received_at <= bindparam("at")).order_by(messages.c.received_at.desc()).limit(1)
SWITCHES_AFTER_INBOUND = conversations.c.switches + case(
    (_PREVIOUS_CHANNEL.scalar_subquery() != bindparam("inbound_connector"), 1), else_=0)
"""``conversations.switches`` once a customer's message (parameters ``conversation_id``, ``inbound_connector``, ``at``)
is stored: one more when their previous message in the conversation came through another configured channel.
Threading (``gateway.conversations``) sets it in the statement that records the message's activity."""
_COUNT_SWITCH = update(conversations).where(conversations.c.id == bindparam("conversation_id")).values(
    switches=SWITCHES_AFTER_INBOUND)


def record_inbound(conn: Connection, conversation_id: str, connector: str, at: datetime) -> None:
    """Before a customer's message is stored: a channel switch when their previous message in the conversation came
    through another configured channel (the pipeline has it done by ``assign_conversation``)."""
    conn.execute(_COUNT_SWITCH, {"conversation_id": conversation_id, "inbound_connector": connector, "at": at})


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``share`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


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
    opened, for charts. ``calendars`` only names the calendar of each channel: durations were measured when they
    ended (``KpiClock``)."""
    reports = [Report(start, end) for start, end in periods]
    opened = select(conversations.c.channel, conversations.c.connector, _language(), conversations.c.created_at,
                    conversations.c.first_response_seconds, conversations.c.resolution_seconds,
                    conversations.c.switches).where(_span(conversations.c.created_at, periods))
    for channel, connector, language, created, response, resolution, switches in conn.execute(opened):
        for report in reports:
            if not _contains(report, created):
                continue
            into = [report.groups[(channel, connector, language or UNKNOWN_LANGUAGE)]]
            if by_day:
                into.append(report.days.setdefault((channel, connector), defaultdict(Figures))[created.date()])
            for figures in into:
                figures.conversations += 1
                figures.switches += switches
                if response is not None:
                    figures.first_responses.append(response)
                if resolution is not None:
                    figures.resolutions.append(resolution)
    count_events(conn, periods, reports)
    for report in reports:
        report.calendars = {connector: (calendar_for(config, calendars, connector) or _NoCalendar).name
                            for _channel, connector in report.by_channel()}
    return reports


class _NoCalendar:
    name = None


def _contains(report: Report, at: datetime) -> bool:
    return (report.start is None or at >= report.start) and at < report.end


def _sums(column: Any, periods: Sequence[Period]) -> list[Any]:
    if len(periods) == 1:
        return [func.count()]  # the WHERE clause already holds the one period
    return [func.sum(case((_in(column, period), 1), else_=0)) for period in periods]


def count_events(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
    """Messages (per configured channel, from the covering index alone), acknowledgements and survey answers by when
    they happened; dead letters by when they were made."""
    count_messages(conn, periods, reports)
    count_acknowledgements(conn, periods, reports)
    count_surveys(conn, periods, reports)
    count_dead_letters(conn, periods, reports)


def count_messages(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
    sent = messages.c.direction == "outbound"
    counted = (select(messages.c.connector, sent, *_sums(messages.c.received_at, periods))
               .where(_span(messages.c.received_at, periods))  # the range of ix_messages_received_at (covering)
               .group_by(messages.c.connector, sent))
    for connector, outbound, *counts in conn.execute(counted):
        for report, count in zip(reports, counts, strict=True):
            if count:
                into = report.messages.setdefault(connector, [0, 0])
                into[1 if outbound else 0] += int(count)


def _group() -> tuple[Any, Any, Any]:
    return conversations.c.channel, conversations.c.connector, _language()


def count_acknowledgements(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
    group = _group()
    joined = acknowledgements.join(conversations, conversations.c.id == acknowledgements.c.conversation_id)
    query = (select(*group, *_sums(acknowledgements.c.acknowledged_at, periods)).select_from(joined)
             .where(_span(acknowledgements.c.acknowledged_at, periods), acknowledgements.c.status == "sent")
             .group_by(*group))
    for channel, connector, language, *counts in conn.execute(query):
        for report, count in zip(reports, counts, strict=True):
            if count:
                report.groups[(channel, connector, language or UNKNOWN_LANGUAGE)].acknowledgements += int(count)


def count_surveys(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
    group = _group()
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


def count_dead_letters(conn: Connection, periods: Sequence[Period], reports: list[Report]) -> None:
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


def _bucket(column: Any, bounds: Sequence[float]) -> Any:
    """The index of the first bound ``column`` is at or under (len(bounds) above them all, -1 when unmeasured)."""
    return case((column.is_(None), -1), *[(column <= bound, index) for index, bound in enumerate(bounds)],
                else_=len(bounds))


def _histogram_entry(found: dict[Group, dict[str, Any]], group: Group, bounds: Sequence[float]) -> dict[str, Any]:
    return found.setdefault(group, {
        "conversations": 0, "switches": 0, "first_response": [[0] * len(bounds), 0, 0.0],
        "resolution": [[0] * len(bounds), 0, 0.0]})


def _add_histogram_row(found: dict[Group, dict[str, Any]], row: Sequence[Any], bounds: Sequence[float],
                       sign: int = 1) -> None:
    """One (channel, connector, language, first response bucket, resolution bucket) row: its conversations, their
    switches and the sums of both durations, added (or taken away)."""
    channel, connector, language, first_at, solved_at, count, switches, first_sum, solved_sum = row
    entry = _histogram_entry(found, (channel, connector, language or UNKNOWN_LANGUAGE), bounds)
    entry["conversations"] += sign * int(count)
    entry["switches"] += sign * int(switches or 0)
    for name, bucket, total in (("first_response", first_at, first_sum), ("resolution", solved_at, solved_sum)):
        if bucket < 0:
            continue
        under, _, _ = entry[name]
        for index in range(bucket, len(bounds)):  # cumulative: at or under every bound from its own up
            under[index] += sign * int(count)
        entry[name][1] += sign * int(count)
        entry[name][2] += sign * float(total or 0.0)


def conversation_histograms(conn: Connection, end: datetime, bounds: Sequence[float],
                            start: datetime | None = None) -> dict[Group, dict[str, Any]]:
    """All conversations opened before ``end`` (and from ``start``) per group, counted in SQL: how many, their
    channel switches, and for first response and resolution times the count at or under each bound, the count and
    the sum."""
    first, solved = conversations.c.first_response_seconds, conversations.c.resolution_seconds
    keys = (conversations.c.channel, conversations.c.connector, _language(), _bucket(first, bounds),
            _bucket(solved, bounds))
    query = (select(*keys, func.count(), func.sum(conversations.c.switches), func.sum(first), func.sum(solved))
             .where(_in(conversations.c.created_at, (start, end))).group_by(*keys))
    found: dict[Group, dict[str, Any]] = {}
    for row in conn.execute(query):
        _add_histogram_row(found, row, bounds)
    return found


# later than any stored time: rows dated from now on are those between now and it
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_TOTALS_KEY = (kpi_totals.c.kind, kpi_totals.c.channel, kpi_totals.c.connector, kpi_totals.c.language,
               kpi_totals.c.direction, kpi_totals.c.first_bucket, kpi_totals.c.resolution_bucket)
_TOTALS_VALUES = ("events", "switches", "first_sum", "resolution_sum")


def all_time(conn: Connection, now: datetime, bounds: Sequence[float]) -> tuple[dict[Group, dict[str, Any]], Report]:
    """What ``conversation_histograms(conn, now, bounds)`` and ``count_events`` for all time before ``now`` count
    (messages, acknowledgements and survey answers in the report), without counting every message again: the
    triggers of migration 0019 keep all-time totals in ``kpi_totals`` as rows come, change and go (on SQLite, new
    messages are counted here: ``_count_new_messages``); the rows dated from ``now`` on (a sender's clock ahead, a
    stamp in the future) are counted and taken away. ``bounds`` must be the migration's ``BUCKETS``; ``conn`` must
    read one snapshot (SQLite's transactions do, PostgreSQL's from REPEATABLE READ on), or a row written between two
    of its statements could be taken away without being added. On SQLite it writes: commit it."""
    histograms: dict[Group, dict[str, Any]] = {}
    report = Report(None, now)
    kept: dict[tuple[str, str], int] = defaultdict(int)  # messages per (connector, direction)
    acks: dict[Group, int] = defaultdict(int)
    query = select(*_TOTALS_KEY, *[func.sum(kpi_totals.c[name]) for name in _TOTALS_VALUES]).group_by(*_TOTALS_KEY)
    for kind, channel, connector, language, direction, first_at, solved_at, events, switches, first_sum, solved_sum \
            in conn.execute(query):
        if kind == "message":
            kept[(connector, direction)] += int(events)
        elif kind == "ack":
            acks[(channel, connector, language)] += int(events)
        elif events:
            _add_histogram_row(histograms, (channel, connector, language, first_at, solved_at, events, switches,
                                            first_sum, solved_sum), bounds)
    if conn.dialect.name == "sqlite":
        _count_new_messages(conn, kept)
    messages_by: dict[tuple[str, bool], int] = defaultdict(int)
    for (connector, direction), count in kept.items():
        messages_by[(connector, direction == "outbound")] += count
    later = Report(now, FAR_FUTURE)
    count_messages(conn, [(now, FAR_FUTURE)], [later])
    count_acknowledgements(conn, [(now, FAR_FUTURE)], [later])
    for connector, (inbound, outbound) in later.messages.items():
        messages_by[(connector, False)] -= inbound
        messages_by[(connector, True)] -= outbound
    for group, figures in later.groups.items():
        acks[group] -= figures.acknowledgements
    for group, entry in conversation_histograms(conn, FAR_FUTURE, bounds, start=now).items():
        row = (*group, -1, -1, entry["conversations"], entry["switches"], 0.0, 0.0)
        _add_histogram_row(histograms, row, bounds, sign=-1)
        for name in ("first_response", "resolution"):
            mine, theirs = histograms[group][name], entry[name]
            mine[0] = [have - less for have, less in zip(mine[0], theirs[0], strict=True)]
            mine[1] -= theirs[1]
            mine[2] -= theirs[2]
    for (connector, outbound), count in sorted(messages_by.items()):
        if count:
            report.messages.setdefault(connector, [0, 0])[1 if outbound else 0] += count
    for group, count in sorted(acks.items()):
        if count:
            report.groups[group].acknowledgements += count
    count_surveys(conn, [(None, now)], [report])
    return {group: entry for group, entry in histograms.items() if entry["conversations"]}, report


_MARK = select(kpi_counted.c.to_rowid).where(kpi_counted.c.table_name == "messages")
# by rowid (NOT INDEXED: SQLite would rather scan an index in the GROUP BY's order, and SQLAlchemy drops its hints)
_ABOVE_MARK = text("SELECT connector, direction, count(*), max(rowid) FROM messages NOT INDEXED WHERE rowid > :mark "
                   "GROUP BY connector, direction")


def _count_new_messages(conn: Connection, kept: dict[tuple[str, str], int]) -> None:
    """SQLite: ``kept`` holds the messages up to the rowid in ``kpi_counted``; the rows above it are added and the
    totals and the mark moved past them. A new message takes the rowid after the highest (the delete trigger lowers
    the mark when the highest counted ones go), so the rows above the mark are the ones not counted yet, unless the
    rowids were renumbered (VACUUM, a table copied): then the totals disagree with the table's row count, and every
    message is counted again."""
    mark = conn.execute(_MARK).scalar_one()
    above = conn.execute(_ABOVE_MARK, {"mark": mark}).all()
    rows = conn.execute(select(func.count()).select_from(messages)).scalar_one()
    if rows != sum(kept.values()) + sum(count for _, _, count, _ in above):
        conn.execute(delete(kpi_totals).where(kpi_totals.c.kind == "message"))
        kept.clear()
        above = conn.execute(_ABOVE_MARK, {"mark": -(2**63)}).all()
    if not above:
        return
    for connector, direction, count, _ in above:
        kept[(connector, direction)] += count
        added = sqlite_insert(kpi_totals).values(
            kind="message", channel="", connector=connector, language="", direction=direction, first_bucket=-1,
            resolution_bucket=-1, shard=0, events=count, switches=0, first_sum=0.0, resolution_sum=0.0)
        conn.execute(added.on_conflict_do_update(
            index_elements=[column.name for column in (*_TOTALS_KEY, kpi_totals.c.shard)],
            set_={"events": kpi_totals.c.events + added.excluded.events}))
    conn.execute(update(kpi_counted).where(kpi_counted.c.table_name == "messages").values(
        to_rowid=max(last for *_, last in above)))


def fold_ended_shards(conn: Connection) -> None:
    """PostgreSQL: the totals ended connections added move into shard 0, so the table keeps a few rows per
    connection alive rather than per connection ever opened."""
    if conn.dialect.name != "postgresql":
        return
    key = ", ".join(column.name for column in _TOTALS_KEY)
    sums = ", ".join(f"sum({name})" for name in _TOTALS_VALUES)
    updates = ", ".join(f"{name} = kpi_totals.{name} + excluded.{name}" for name in _TOTALS_VALUES)
    conn.execute(text(
        f"WITH ended AS (DELETE FROM kpi_totals WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity "
        f"WHERE pid IS NOT NULL) RETURNING *) INSERT INTO kpi_totals ({key}, shard, {', '.join(_TOTALS_VALUES)}) "
        f"SELECT {key}, 0, {sums} FROM ended GROUP BY {key} "
        f"ON CONFLICT ({key}, shard) DO UPDATE SET {updates}"))
