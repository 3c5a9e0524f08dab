"""Business hours: named calendars (time zone, weekly hours, holidays) and time measured in open minutes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
# Bounds every walk over days: a calendar open one day a year still answers within two years.
_MAX_DAYS = 800


def _weekdays(key: str) -> list[int]:
    """`mon`, `mon-fri` or `sat-sun` as weekday numbers (Monday is 0)."""
    first, _, last = key.strip().lower().partition("-")
    if first not in WEEKDAYS or (last and last not in WEEKDAYS):
        raise ValueError(f"{key!r} is not a day or range of days such as mon, sat or mon-fri")
    start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
    if end < start:
        raise ValueError(f"{key!r} runs backwards: write the days in order, such as mon-fri")
    return list(range(start, end + 1))


def _span(text: str) -> tuple[time, time | None]:
    """`09:00-17:30` as (start, end); an end of 24:00 is None (midnight at the end of the day)."""
    match = _SPAN.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a span such as 09:00-17:30")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError(f"{text!r} holds a time that does not exist")
    end = None if h2 == 24 else time(h2, m2)
    if end is not None and end <= time(h1, m1):
        raise ValueError(f"{text!r} ends before it starts: split a span across midnight into two days")
    return time(h1, m1), end


class CalendarConfig(BaseModel):
    """One `business_hours:` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field(description="IANA time zone, such as Asia/Kolkata or America/New_York.")
    hours: dict[str, list[str]] = Field(
        description="Open spans per day or range of days: "
                    "{mon-fri: ['09:00-13:00', '14:00-18:00'], sat: ['10:00-14:00']}."
    )
    holidays: list[date] = Field([], description="Dates (in the calendar's time zone) when the business is closed.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/London") from None
        return value

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[int, str] = {}
        for key, spans in value.items():
            for day in _weekdays(key):
                if day in seen:
                    raise ValueError(f"{WEEKDAYS[day]} is given twice ({seen[day]!r} and {key!r})")
                seen[day] = key
            for span in spans:
                _span(span)
        return value


class BusinessCalendar:
    """Answers whether the business is open and counts time in open minutes, across time zones and DST."""

    def __init__(self, name: str, config: CalendarConfig) -> None:
        self.name = name
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self._holidays = frozenset(config.holidays)
        self._week: dict[int, list[tuple[time, time | None]]] = {day: [] for day in range(7)}
        for key, spans in config.hours.items():
            for day in _weekdays(key):
                self._week[day] = sorted(_span(span) for span in spans)

    def spans_on(self, day: date) -> list[tuple[datetime, datetime]]:
        """The open spans of one local date, as UTC datetimes."""
        if day in self._holidays:
            return []
        spans = []
        for start, end in self._week[day.weekday()]:
            opens = datetime.combine(day, start, self.zone)
            closes = datetime.combine(day + timedelta(days=1), time(0), self.zone) if end is None \
                else datetime.combine(day, end, self.zone)
            spans.append((opens.astimezone(UTC), closes.astimezone(UTC)))
        return spans

    def _spans_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        day = at.astimezone(self.zone).date() - timedelta(days=1)  # a span of the previous local day may still run
        for offset in range(_MAX_DAYS):
            for opens, closes in self.spans_on(day + timedelta(days=offset)):
                if closes > at:
                    yield max(opens, at), closes

    def is_open(self, at: datetime) -> bool:
        at = _aware(at)
        return any(opens <= at < closes for opens, closes in self.spans_on(at.astimezone(self.zone).date()))

    def next_open(self, at: datetime) -> datetime | None:
        """`at` itself when open, else the next opening; None when the calendar never opens again."""
        return next((opens for opens, _ in self._spans_from(_aware(at))), None)

    def add_business_minutes(self, start: datetime, minutes: float) -> datetime | None:
        """The moment `minutes` open minutes after `start`; None when the calendar never gets there."""
        left = timedelta(minutes=minutes)
        for opens, closes in self._spans_from(_aware(start)):
            if closes - opens >= left:
                return opens + left
            left -= closes - opens
        return None

    def business_seconds_between(self, start: datetime, end: datetime) -> float:
        """Open seconds from `start` to `end` (0 when `end` is not after `start`)."""
        start, end = _aware(start), _aware(end)
        total = 0.0
        if end <= start:
            return total
        for opens, closes in self._spans_from(start):
            if opens >= end:
                break
            total += (min(closes, end) - opens).total_seconds()
        return total

    def describe(self) -> str:
        """The weekly hours in words for a message to a customer: `Mon-Fri 09:00-17:00 (Asia/Kolkata)`."""
        parts = [f"{key.title()} {', '.join(spans)}" for key, spans in self.config.hours.items() if spans]
        return f"{'; '.join(parts)} ({self.config.timezone})" if parts else f"closed ({self.config.timezone})"


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def build_calendars(configs: dict[str, CalendarConfig]) -> dict[str, BusinessCalendar]:
    return {name: BusinessCalendar(name, config) for name, config in configs.items()}
