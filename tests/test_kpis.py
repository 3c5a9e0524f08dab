"""KPIs read from the database: a constructed week with known answers, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, text

from gateway.kpis import KpiClock, KpisConfig, backlog, compute, open_dead_letters, percentile, record_solved
from gateway.plugins import TicketStatus
from gateway.storage.db import alembic_config, make_engine, migrate
from gateway.storage.tables import conversations
from tests.kpi_data import CALENDARS, CONFIG, at, build


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'k.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        build(conn)
    yield engine
    engine.dispose()


def test_a_week_per_channel_and_language(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        week, = compute(conn, [(at(0, 0), at(7, 0))], CONFIG, CALENDARS)
    sms_en = week.groups[("sms", "sms-main", "en")].summary()
    assert sms_en == {
        "conversations": 4, "messages_in": 0, "messages_out": 0, "answered": 3,  # messages: per channel only
        "first_response_p50": 1800.0, "first_response_p90": 3600.0,  # 600, 1800 (over the night), 3600 open seconds
        "resolved": 1, "resolution_p50": 7200.0, "resolution_p90": 7200.0, "channel_switches": 0,
        "acknowledgements": 1, "satisfaction_answers": 1, "satisfaction_average": 5.0}
    assert week.groups[("sms", "sms-main", "es")].summary()["first_response_p50"] == 3600.0
    wa_en = week.groups[("whatsapp", "wa", "en")].summary()
    assert (wa_en["conversations"], wa_en["channel_switches"]) == (1, 2)
    assert (wa_en["satisfaction_answers"], wa_en["satisfaction_average"]) == (1, 4.0)
    wa_und = week.groups[("whatsapp", "wa", "und")].summary()
    assert (wa_und["conversations"], wa_und["first_response_p50"]) == (1, 86400.0)
    by_channel = {key: figures.summary() for key, figures in week.by_channel().items()}
    assert by_channel[("whatsapp", "wa")]["first_response_p50"] == 1800.0  # wall-clock: wa has no calendar
    assert by_channel[("whatsapp", "wa")]["first_response_p90"] == 86400.0
    assert by_channel[("sms", "sms-main")]["conversations"] == 5
    # by when they arrived, on the channel they came through: w1's message on sms-main counts there
    assert (by_channel[("sms", "sms-main")]["messages_in"], by_channel[("sms", "sms-main")]["messages_out"]) == (7, 6)
    assert (by_channel[("whatsapp", "wa")]["messages_in"], by_channel[("whatsapp", "wa")]["messages_out"]) == (4, 1)
    assert week.calendars == {"sms-main": "office", "wa": None}
    assert week.dead_letters == {"sms-main": 2}
    assert week.total().conversations == 7


def test_several_periods_at_once_agree_with_each_alone(engine) -> None:  # type: ignore[no-untyped-def]
    periods = [(at(0, 0), at(1, 0)), (at(0, 0), at(7, 0)), (None, at(30, 0))]
    with engine.connect() as conn:
        together = compute(conn, periods, CONFIG, CALENDARS)
        alone = [compute(conn, [period], CONFIG, CALENDARS)[0] for period in periods]
    for one, other in zip(together, alone, strict=True):
        assert {k: v.summary() for k, v in one.groups.items()} == {k: v.summary() for k, v in other.groups.items()}
    monday = together[0].groups[("sms", "sms-main", "en")].summary()
    assert monday["conversations"] == 2
    assert together[0].messages == {"sms-main": [4, 4]}  # c1 (2 in, ack and 2 replies out), c2, c5 (in and out)
    assert monday["first_response_p50"] == 600.0 and monday["first_response_p90"] == 1800.0
    assert together[2].total().conversations == 8  # since the beginning: the week before too
    assert together[2].dead_letters == {"sms-main": 2, "zd": 1}


def test_without_a_calendar_every_second_counts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wall.db'}")
    migrate(engine)
    with engine.begin() as conn:
        build(conn, KpiClock(KpisConfig(), CALENDARS))
    with engine.connect() as conn:
        week, = compute(conn, [(at(0, 0), at(7, 0))], KpisConfig(), CALENDARS)
    engine.dispose()
    assert sorted(week.groups[("sms", "sms-main", "en")].first_responses) == [600.0, 3600.0, 16 * 3600 + 1800.0]
    assert week.calendars == {"sms-main": None, "wa": None}


def test_dead_letters_open_and_the_backlog(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert open_dead_letters(conn) == {"sms-main": 1, "zd": 1}
        waiting = backlog(conn)
    assert waiting.ages(at(7, 0)) == {("inbox", "wa"): 3600.0}


def test_a_solved_ticket_keeps_its_first_solved_time(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        clock = KpiClock(CONFIG, CALENDARS)
        record_solved(conn, [TicketStatus("w2", "open", at(6, 11)), TicketStatus("w2", "solved", at(6, 12))], clock)
        record_solved(conn, [TicketStatus("w2", "closed", at(6, 20))], clock)
        assert conn.execute(select(conversations.c.solved_at).where(conversations.c.id == "w2")).scalar() \
            == at(6, 12)
    with engine.connect() as conn:
        week, = compute(conn, [(at(0, 0), at(7, 0))], CONFIG, CALENDARS)
    assert week.groups[("whatsapp", "wa", "und")].resolutions == [7200.0]


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.9) == 4.0
    assert percentile(list(map(float, range(1, 11))), 0.9) == 9.0


def test_conversations_split_by_the_day_they_opened(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        week, = compute(conn, [(at(0, 0), at(7, 0))], CONFIG, CALENDARS, by_day=True)
    days = week.days[("sms", "sms-main")]
    assert {day.isoformat(): figures.conversations for day, figures in days.items()} == {
        "2026-03-02": 3, "2026-03-03": 1, "2026-03-04": 1}
    assert sorted(days[at(0, 0).date()].first_responses) == [600.0, 1800.0, 3600.0]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_fills_in_existing_conversations(backend: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    command.upgrade(alembic_config(engine), "0016")
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO customers (id, created_at, updated_at) VALUES ('cust', :t0, :t0)",
            "INSERT INTO inbox (id, connector, provider_id, kind, content_type, headers, body, public_url, received_at,"
            " status, attempts, available_at, keyed) VALUES (1, 'sms-main', 'p', 'message', 'text/plain', '{}', :b,"
            " '-', :t0, 'done', 0, :t0, false)",
            "INSERT INTO conversations (id, customer_id, channel, connector, status, created_at, last_activity_at)"
            " VALUES ('c1', 'cust', 'sms', 'sms-main', 'open', :t0, :t0)",
            "INSERT INTO messages (id, inbox_id, connector, provider_message_id, customer_id, conversation_id,"
            " thread_rule, direction, data, received_at, created_at) VALUES ('m1', 1, 'sms-main', 'p1', 'cust', 'c1',"
            " 'new', 'inbound', '{\"language\": \"de\"}', :t0, :t0), ('m2', 1, 'sms-main', 'p2', 'cust', 'c1',"
            " 'reply', 'outbound', '{}', :t1, :t1)",
            "INSERT INTO surveys (crm, conversation_id, customer_id, channel, rule, status, asked_at, attempts,"
            " available_at) VALUES ('zd', 'c1', 'cust', 'sms-main', 'csat', 'asked', :t2, 0, :t2)",
        ):
            conn.execute(text(statement), {"t0": at(0, 10), "t1": at(0, 10, 30), "t2": at(1, 10), "b": b""})
    migrate(engine)
    with engine.connect() as conn:
        row = conn.execute(select(conversations).where(conversations.c.id == "c1")).one()
    engine.dispose()
    assert (row.language, row.first_reply_at, row.solved_at, row.switches) == ("de", at(0, 10, 30), at(1, 10), 0)
    assert (round(row.first_response_seconds, 3), round(row.resolution_seconds, 3)) == (1800.0, 86400.0)
