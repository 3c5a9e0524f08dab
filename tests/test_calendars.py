"""Business-hours calendars: open or closed, next opening, open minutes across nights, holidays and DST."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from pydantic import ValidationError

from gateway.calendars import BusinessCalendar, CalendarConfig

KOLKATA = CalendarConfig(
    timezone="Asia/Kolkata",
    hours={"mon-fri": ["09:00-13:00", "14:00-18:00"], "sat": ["10:00-14:00"]},
    holidays=[date(2026, 1, 26)],
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def kolkata() -> BusinessCalendar:
    return BusinessCalendar("india", KOLKATA)


def test_open_and_closed_follow_the_local_clock(kolkata: BusinessCalendar) -> None:
    # 2026-01-27 is a Tuesday; Kolkata is UTC+05:30.
    assert kolkata.is_open(utc(2026, 1, 27, 3, 30))       # 09:00 local
    assert not kolkata.is_open(utc(2026, 1, 27, 3, 29))   # 08:59
    assert not kolkata.is_open(utc(2026, 1, 27, 8, 0))    # 13:30, lunch
    assert not kolkata.is_open(utc(2026, 1, 27, 12, 30))  # 18:00, closed at the end of a span
    assert not kolkata.is_open(utc(2026, 2, 1, 6, 0))     # Sunday


def test_a_holiday_is_closed_all_day(kolkata: BusinessCalendar) -> None:
    assert not kolkata.is_open(utc(2026, 1, 26, 6, 0))  # Monday, Republic Day
    assert kolkata.next_open(utc(2026, 1, 26, 6, 0)) == utc(2026, 1, 27, 3, 30)


def test_next_open_is_now_when_open_and_the_next_span_otherwise(kolkata: BusinessCalendar) -> None:
    assert kolkata.next_open(utc(2026, 1, 27, 5, 0)) == utc(2026, 1, 27, 5, 0)
    assert kolkata.next_open(utc(2026, 1, 27, 8, 0)) == utc(2026, 1, 27, 8, 30)    # after lunch
    assert kolkata.next_open(utc(2026, 1, 30, 13, 0)) == utc(2026, 1, 31, 4, 30)   # Friday night -> Saturday 10:00
    assert kolkata.next_open(utc(2026, 1, 31, 9, 0)) == utc(2026, 2, 2, 3, 30)     # Saturday 14:30 -> Monday


def test_business_minutes_skip_nights_lunches_and_weekends(kolkata: BusinessCalendar) -> None:
    friday_1730 = utc(2026, 1, 30, 12, 0)
    # 30 open minutes on Friday, then 90 on Saturday from 10:00.
    assert kolkata.add_business_minutes(friday_1730, 120) == utc(2026, 1, 31, 6, 0)
    assert kolkata.business_seconds_between(friday_1730, utc(2026, 1, 31, 6, 0)) == 120 * 60
    assert kolkata.business_seconds_between(utc(2026, 1, 31, 9, 0), utc(2026, 2, 1, 12, 0)) == 0
    assert kolkata.business_seconds_between(utc(2026, 2, 2, 0, 0), utc(2026, 2, 1, 0, 0)) == 0


def test_a_minute_count_landing_on_a_span_end_is_that_end(kolkata: BusinessCalendar) -> None:
    assert kolkata.add_business_minutes(utc(2026, 1, 27, 3, 30), 240) == utc(2026, 1, 27, 7, 30)


def test_daylight_saving_changes_keep_local_hours() -> None:
    new_york = BusinessCalendar("us", CalendarConfig(timezone="America/New_York", hours={"mon-fri": ["09:00-17:00"]}))
    assert new_york.is_open(utc(2026, 3, 6, 14, 0))        # Friday 09:00 EST (UTC-5)
    assert new_york.is_open(utc(2026, 3, 9, 13, 0))        # Monday 09:00 EDT (UTC-4), after the change on 8 March
    assert not new_york.is_open(utc(2026, 3, 9, 21, 30))   # 17:30 EDT (16:30 had the clock not changed)
    assert new_york.add_business_minutes(utc(2026, 3, 6, 21, 30), 60) == utc(2026, 3, 9, 13, 30)


def test_a_span_may_run_to_midnight_and_around_the_clock() -> None:
    always = BusinessCalendar("always", CalendarConfig(timezone="UTC", hours={"mon-sun": ["00:00-24:00"]}))
    assert always.is_open(utc(2026, 5, 3, 23, 59))
    assert always.add_business_minutes(utc(2026, 5, 3, 23, 0), 120) == utc(2026, 5, 4, 1, 0)


def test_a_calendar_that_never_opens_answers_none_without_looping_forever() -> None:
    never = BusinessCalendar("never", CalendarConfig(timezone="UTC", hours={}))
    assert never.next_open(utc(2026, 5, 3)) is None
    assert never.add_business_minutes(utc(2026, 5, 3), 1) is None
    assert never.describe() == "closed (UTC)"


def test_describe_reads_like_opening_hours(kolkata: BusinessCalendar) -> None:
    assert kolkata.describe() == "Mon-Fri 09:00-13:00, 14:00-18:00; Sat 10:00-14:00 (Asia/Kolkata)"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"timezone": "Mars/Olympus", "hours": {}}, "not an IANA time zone"),
        ({"timezone": "UTC", "hours": {"monday": ["09:00-17:00"]}}, "not a day or range of days"),
        ({"timezone": "UTC", "hours": {"fri-mon": ["09:00-17:00"]}}, "runs backwards"),
        ({"timezone": "UTC", "hours": {"mon-fri": ["9-5"]}}, "not a span such as 09:00-17:30"),
        ({"timezone": "UTC", "hours": {"mon": ["18:00-09:00"]}}, "ends before it starts"),
        ({"timezone": "UTC", "hours": {"mon": ["09:00-25:00"]}}, "does not exist"),
        ({"timezone": "UTC", "hours": {"mon-fri": ["09:00-17:00"], "fri": ["10:00-12:00"]}}, "fri is given twice"),
    ],
)
def test_bad_calendars_are_refused_with_a_clear_reason(config: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CalendarConfig.model_validate(config)
