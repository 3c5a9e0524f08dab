"""The KPIs on /metrics (labels, histogram, cache, agreement between processes), in ``gateway kpis`` and in the
config."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from gateway.cli import main
from gateway.config import load_config
from gateway.kpi_metrics import KpiCollector
from gateway.runtime import build_runtime
from gateway.storage.links import DbLinkStore
from gateway.storage.tables import conversations, messages
from gateway.web import create_app
from gateway.yamlsource import ConfigError
from tests.conftest import BASE_CONFIG
from tests.kpi_data import Builder, at, build
from tests.test_surveys import CONFIG as SURVEY_CONFIG
from tests.test_surveys import TICKET, customer_writes, ticket_solved

KPI_CONFIG = BASE_CONFIG + """
business_hours:
  office: {timezone: UTC, hours: {mon-fri: ["09:00-17:00"]}}
kpis:
  channels: {sms-main: office}
"""


@pytest.fixture
def kpi_config(write_config: Callable[..., Path]) -> Path:
    path = write_config(KPI_CONFIG)
    runtime = build_runtime(load_config(path), http=requests.Session())
    with runtime.engine.begin() as conn:
        build(conn)
    runtime.close()
    return path


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def test_metrics_tell_channel_types_and_names_apart(kpi_config: Path) -> None:
    runtime = build_runtime(load_config(kpi_config), http=requests.Session())
    try:
        text = create_app(runtime).test_client().get("/metrics").get_data(as_text=True)
    finally:
        runtime.close()
    conversations = samples(text, "gateway_conversations_total")
    assert conversations[(("channel", "whatsapp"), ("connector", "wa"), ("language", "en"))] == 1
    assert conversations[(("channel", "sms"), ("connector", "sms-main"), ("language", "en"))] == 5  # c0 too
    assert samples(text, "gateway_channel_switches_total")[
        (("channel", "whatsapp"), ("connector", "wa"), ("language", "en"))] == 2
    buckets = samples(text, "gateway_first_response_seconds_bucket")
    sms_en = (("channel", "sms"), ("connector", "sms-main"), ("language", "en"))
    # open seconds: 600, 1800, 3600, and c0's 3600
    assert buckets[(*sms_en[:2], ("language", "en"), ("le", "900.0"))] == 1
    assert buckets[(*sms_en[:2], ("language", "en"), ("le", "3600.0"))] == 4
    assert samples(text, "gateway_first_response_seconds_sum")[sms_en] == 600 + 1800 + 3600 + 3600
    assert samples(text, "gateway_dead_letters_open") == {(("target", "sms-main"),): 1, (("target", "zd"),): 1}
    assert samples(text, "gateway_satisfaction_points_total")[sms_en] == 5
    assert samples(text, "gateway_messages_total")[(("channel", "whatsapp"), ("connector", "wa"),
                                                    ("direction", "outbound"))] == 2


def _conversations(collector: KpiCollector) -> float:
    return sum(sample.value for family in collector.collect() for sample in family.samples
               if sample.name == "gateway_conversations_total")


def test_the_cache_is_short_and_processes_agree(kpi_config: Path) -> None:
    config = load_config(kpi_config)
    runtime = build_runtime(config, http=requests.Session())
    engine: Engine = runtime.engine
    now = [at(30, 0)]
    first = KpiCollector.for_settings(engine, config.settings)
    first.clock = lambda: now[0]
    try:
        assert _conversations(first) == 8
        with engine.begin() as conn:
            b = Builder.__new__(Builder)
            b.conn, b.count, b.inbox_id = conn, 500, 1
            b.conversation("n1", "email", "mail", "de", at(29, 0))
        now[0] += timedelta(seconds=29)
        assert _conversations(first) == 8  # within kpis.cache_seconds (30 by default)
        other = KpiCollector.for_settings(engine, config.settings)  # another web process, its cache cold
        assert _conversations(other) == 9
        now[0] += timedelta(seconds=1)
        assert _conversations(first) == 9
    finally:
        runtime.close()


def test_kpis_cli_json_for_a_period(kpi_config: Path) -> None:
    result = CliRunner().invoke(main, ["kpis", "-c", str(kpi_config), "--from", "2026-03-02", "--to", "2026-03-09",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["from"], report["to"]) == ("2026-03-02T00:00:00+00:00", "2026-03-09T00:00:00+00:00")
    channels = {row["connector"]: row for row in report["channels"]}
    assert channels["sms-main"]["calendar"] == "office" and channels["wa"]["calendar"] is None
    assert (channels["sms-main"]["first_response_p50"], channels["sms-main"]["first_response_p90"]) == (1800, 3600)
    assert channels["wa"]["channel_switches"] == 2
    assert report["total"]["conversations"] == 7
    assert report["dead_letters"] == {"new": {"sms-main": 2}, "open": {"sms-main": 1, "zd": 1}}
    assert {k: v for k, v in report["backlog_age_seconds"][0].items()
                                              if k != "seconds"} == {"queue": "inbox", "name": "wa"}
    languages = {(row["connector"], row["language"]) for row in report["languages"]}
    assert languages == {("sms-main", "en"), ("sms-main", "es"), ("wa", "en"), ("wa", "und")}


def test_kpis_cli_table_and_bad_periods(kpi_config: Path) -> None:
    table = CliRunner().invoke(main, ["kpis", "-c", str(kpi_config), "--from", "2026-03-02", "--to", "2026-03-03"])
    assert table.exit_code == 0, table.output
    line = next(row for row in table.stdout.splitlines() if row.startswith("sms "))
    assert line.split()[:4] == ["sms", "sms-main", "3", "4"]  # c1, c2, c5; four customer messages on Monday
    assert "office" in line
    for args in (["--since", "7x"], ["--since", "7d", "--from", "2026-03-02"], ["--from", "2026-03-09",
                                                                              "--to", "2026-03-02"]):
        refused = CliRunner().invoke(main, ["kpis", "-c", str(kpi_config), *args])
        assert refused.exit_code == 2, refused.output


def test_kpis_calendars_must_exist(write_config: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(BASE_CONFIG + "kpis: {business_hours: nope, channels: {ghost: office}}\n"))
    issues = {(issue.path, issue.message) for issue in raised.value.issues}
    assert ("kpis.business_hours", "no business_hours calendar 'nope'") in issues
    assert ("kpis.channels.ghost", "no channel named 'ghost'") in issues


def test_the_pipeline_keeps_a_solved_time_and_the_resolution_time(write_config: Callable[..., Path]) -> None:
    runtime = build_runtime(load_config(write_config(SURVEY_CONFIG)), http=requests.Session())
    try:
        first = customer_writes(runtime, 1, "My parcel never came and nobody answers the phone")
        with runtime.engine.connect() as conn:
            conversation = conn.execute(select(messages.c.conversation_id).where(messages.c.id == first)).scalar_one()
        DbLinkStore(runtime.engine, "desk").put("conversation", conversation, str(TICKET))
        ticket_solved(runtime, "01HQ7ZK5W6R8Y3ND2C1B0A9F8E")
        with runtime.engine.connect() as conn:
            row = conn.execute(select(conversations).where(conversations.c.id == conversation)).one()
    finally:
        runtime.close()
    assert row.solved_at is not None and row.resolution_seconds == (row.solved_at - row.created_at).total_seconds()
    assert row.language == "en" and row.switches == 0 and row.first_reply_at is None
