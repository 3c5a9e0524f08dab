"""The all-time totals /metrics reads (kept by the triggers of migration 0019) equal a full recount: after more rows
arrive, some dated in the past or the future, after rows change group, after retention and erasure delete rows, after
an upgrade of a database that had rows, and in a process started afterwards."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from prometheus_client.core import Metric
from sqlalchemy import Connection, Engine, delete, func, select, text, update

import gateway.kpi_metrics
from gateway.erasure import erase, holdings
from gateway.kpi_metrics import BUCKETS, KpiCollector
from gateway.kpis import KpiClock, Report, conversation_histograms, count_events
from gateway.retention import Retention
from gateway.storage.db import alembic_config, make_engine, migrate
from gateway.storage.tables import acknowledgements, conversations, customers, kpi_counted, kpi_totals, messages
from tests.kpi_data import CALENDARS, CONFIG, Builder, at, build

NOW = at(30, 0)


def recount(conn: Connection, now: datetime, bounds: Any) -> tuple[dict[Any, dict[str, Any]], Report]:
    """What /metrics read before the totals: every row of all time counted again."""
    report = Report(None, now)
    count_events(conn, [(None, now)], [report])
    return conversation_histograms(conn, now, bounds), report


def samples(families: Iterator[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families for sample in family.samples if not sample.name.startswith("gateway_backlog")}


def scrape(engine: Engine, monkeypatch: pytest.MonkeyPatch, *, recounted: bool) -> dict[Any, float]:
    """The families a process with a cold cache reports at NOW, from the totals or from a full recount."""
    with monkeypatch.context() as patch:
        if recounted:
            patch.setattr(gateway.kpi_metrics, "all_time", recount)
        return samples(KpiCollector(engine, CONFIG, CALENDARS, clock=lambda: NOW).collect())


def assert_totals_equal_a_recount(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> dict[Any, float]:
    kept, counted = scrape(engine, monkeypatch, recounted=False), scrape(engine, monkeypatch, recounted=True)
    assert kept.keys() == counted.keys()
    for key, value in counted.items():
        assert kept[key] == (pytest.approx(value, rel=1e-12) if key[0].endswith("_sum") else value), key
    return kept


def _total(figures: dict[Any, float], name: str) -> float:
    return sum(value for (sample, _labels), value in figures.items() if sample == name)


def _builder(conn: Connection, count: int) -> Builder:
    b = Builder.__new__(Builder)
    b.conn, b.clock, b.count, b.inbox_id = conn, KpiClock(CONFIG, CALENDARS), count, 1
    return b


def test_totals_follow_new_changed_and_future_rows(migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with migrated_engine.begin() as conn:
        build(conn)
    before = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    assert _total(before, "gateway_messages_total") > 0 and _total(before, "gateway_acknowledgements_sent_total") == 1
    with migrated_engine.begin() as conn:
        b = _builder(conn, 500)
        b.conversation("n1", "email", "mail", None, at(20, 9))  # language unknown until its next message
        b.ack("n1", "mail", "queued", at(20, 9))
        b.message("n1", "mail", "inbound", "continuity", at(-40, 9))  # dated long before (an IMAP INTERNALDATE)
        b.message("n1", "sms-main", "inbound", "continuity", at(20, 10))  # a switch
        b.reply("n1", "mail", at(20, 11))
        b.message("n1", "mail", "inbound", "continuity", NOW + timedelta(hours=1))  # a clock ahead: not yet
        b.conversation("f1", "sms", "sms-main", "en", NOW + timedelta(minutes=5))  # opened after NOW: not yet
        b.ack("f1", "sms-main", "sent", NOW + timedelta(minutes=5))
    middle = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    assert _total(middle, "gateway_conversations_total") == _total(before, "gateway_conversations_total") + 1
    with migrated_engine.begin() as conn:
        conn.execute(update(acknowledgements).where(acknowledgements.c.conversation_id == "n1").values(status="sent"))
        conn.execute(update(conversations).where(conversations.c.id == "n1").values(language="de"))
        conn.execute(update(conversations).where(conversations.c.id == "c4").values(resolution_seconds=90000.0))
        conn.execute(update(acknowledgements).where(acknowledgements.c.conversation_id == "c1").values(
            status="failed"))
    after = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    de = (("channel", "email"), ("connector", "mail"), ("language", "de"))
    assert after[("gateway_acknowledgements_sent_total", de)] == 1
    assert after[("gateway_channel_switches_total", de)] == 2  # to sms-main and back


def test_totals_follow_retention_and_erasure(migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with migrated_engine.begin() as conn:
        build(conn)
        conn.execute(customers.insert().values(id="other", created_at=at(0, 0), updated_at=at(0, 0)))
        b = _builder(conn, 500)
        b.conversation("o1", "whatsapp", "wa", "en", at(3, 9))
        b.ack("o1", "wa", "sent", at(3, 9))
        b.reply("o1", "wa", at(3, 10))
        conn.execute(update(conversations).where(conversations.c.id == "o1").values(customer_id="other"))
        conn.execute(update(messages).where(messages.c.conversation_id == "o1").values(customer_id="other"))
        conn.execute(update(acknowledgements).where(acknowledgements.c.conversation_id == "o1").values(
            customer_id="other"))
    before = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    with migrated_engine.begin() as conn:
        Retention._delete_conversations(conn, ["c1", "w1"], NOW)
    retained = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    assert _total(retained, "gateway_conversations_total") == _total(before, "gateway_conversations_total") - 2
    with migrated_engine.begin() as conn:
        erase(conn, holdings(conn, "other"), key=b"k" * 32, requested_by="test")
    erased = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    assert _total(erased, "gateway_acknowledgements_sent_total") == 0
    assert _total(erased, "gateway_messages_total") < _total(retained, "gateway_messages_total")


def test_a_process_started_later_reads_the_same_totals(migrated_engine: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with migrated_engine.begin() as conn:
        build(conn)
    first = assert_totals_equal_a_recount(migrated_engine, monkeypatch)
    url = migrated_engine.url
    migrated_engine.dispose()  # the process ends: on PostgreSQL its connections' shards are folded into shard 0
    restarted = make_engine(url.render_as_string(hide_password=False))
    try:
        assert scrape(restarted, monkeypatch, recounted=False) == first
        with restarted.connect() as conn:
            shards = set(conn.execute(select(kpi_totals.c.shard).distinct()).scalars())
            rows = conn.execute(select(func.count()).select_from(kpi_totals)).scalar_one()
        assert shards == {0} and rows > 0
        with restarted.begin() as conn:
            _builder(conn, 700).conversation("r1", "sms", "sms-main", "es", at(8, 9))
        again = assert_totals_equal_a_recount(restarted, monkeypatch)
        assert _total(again, "gateway_conversations_total") == _total(first, "gateway_conversations_total") + 1
    finally:
        restarted.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_counts_the_rows_already_there(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    try:
        command.upgrade(alembic_config(engine), "0018")
        with engine.begin() as conn:
            build(conn)
        migrate(engine)
        figures = assert_totals_equal_a_recount(engine, monkeypatch)
        assert _total(figures, "gateway_conversations_total") == 8
    finally:
        engine.dispose()


def test_the_triggers_bucket_as_metrics_does() -> None:
    migration = importlib.import_module("gateway.migrations.versions.0019_kpi_totals")
    assert migration.BUCKETS == BUCKETS


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    migrate(engine)
    with engine.begin() as conn:
        build(conn)
    yield engine
    engine.dispose()


def _mark(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(kpi_counted.c.to_rowid)).scalar_one(),
                conn.execute(select(func.max(text("rowid"))).select_from(messages)).scalar_one())


def test_sqlite_counts_new_messages_above_a_mark_it_moves(sqlite_engine: Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert _mark(sqlite_engine)[0] == 0  # migrated empty: every message is above the mark
    assert_totals_equal_a_recount(sqlite_engine, monkeypatch)
    mark, last = _mark(sqlite_engine)
    assert mark == last > 0
    with sqlite_engine.begin() as conn:  # the highest counted messages go: the next ones take their rowids
        conn.execute(delete(messages).where(text("rowid > :cut")), {"cut": last - 3})
    assert _mark(sqlite_engine) == (last - 3, last - 3)
    with sqlite_engine.begin() as conn:
        b = _builder(conn, 800)
        b.message("c3", "sms-main", "inbound", "continuity", at(2, 9))
        b.reply("c3", "wa", at(2, 10))
    assert _mark(sqlite_engine) == (last - 3, last - 1)
    assert_totals_equal_a_recount(sqlite_engine, monkeypatch)
    assert _mark(sqlite_engine) == (last - 1, last - 1)


def test_sqlite_counts_again_when_rowids_were_renumbered(sqlite_engine: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    before = assert_totals_equal_a_recount(sqlite_engine, monkeypatch)
    with sqlite_engine.begin() as conn:  # as a VACUUM or a copied table may: the mark now lies above every row
        conn.execute(text("UPDATE messages SET rowid = rowid - 1000"))
        _builder(conn, 900).message("c4", "sms-main", "inbound", "continuity", at(2, 10))
    assert _mark(sqlite_engine)[1] < _mark(sqlite_engine)[0]
    after = assert_totals_equal_a_recount(sqlite_engine, monkeypatch)
    assert _total(after, "gateway_messages_total") == _total(before, "gateway_messages_total") + 1
