"""The KPIs on ``/metrics``: read from the database at scrape time (all time, so the counters only grow, but for
rows retention or erasure removed), kept for ``kpis.cache_seconds`` so a busy scraper does not repeat the queries.
The all-time totals are kept as rows are written (``gateway.kpis.all_time``): a scrape reads a few hundred rows,
however many messages there are. Every process reads the same rows, so every process reports the same numbers.
``channel`` is the channel type (sms, whatsapp, email, ...), ``connector`` the configured channel's name."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from gateway.calendars import BusinessCalendar, build_calendars
from gateway.kpis import KpisConfig, all_time, backlog, fold_ended_shards, open_dead_letters
from gateway.storage.db import utcnow

LABELS = ["channel", "connector", "language"]
# seconds: a minute, 5 and 15 minutes, an hour, 4 and 8 hours, a day, 3 days, a week
BUCKETS = (60.0, 300.0, 900.0, 3600.0, 14400.0, 28800.0, 86400.0, 259200.0, 604800.0)


def _histogram(name: str, doc: str, values: dict[tuple[str, str, str], Any]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=LABELS)
    for labels, (under, count, total) in sorted(values.items()):
        buckets = [(repr(bound), float(n)) for bound, n in zip(BUCKETS, under, strict=True)]
        family.add_metric(list(labels), [*buckets, ("+Inf", float(count))], total)
    return family


class KpiCollector(Collector):
    """Collects the KPI families; ``clock`` and ``cache_seconds`` make the cache testable."""

    def __init__(self, engine: Engine, config: KpisConfig, calendars: dict[str, BusinessCalendar],
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.config = config
        self.calendars = calendars
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[datetime, list[Metric]] | None = None

    @classmethod
    def for_settings(cls, engine: Engine, settings: object) -> KpiCollector:
        return cls(engine, settings.kpis, build_calendars(settings.business_hours))  # type: ignore[attr-defined]

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        with self._lock:
            if self._cached is None or (now - self._cached[0]).total_seconds() >= self.config.cache_seconds:
                self._cached = (now, self._read(now))
            families = self._cached[1]
        yield from families

    def _read(self, now: datetime) -> list[Metric]:
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                fold_ended_shards(conn)
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # the totals and the rows dated after now in one snapshot
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():  # SQLite: the messages counted move the mark (gateway.kpis.all_time)
                groups, report = all_time(conn, now, BUCKETS)
                dead = open_dead_letters(conn)
                waiting = backlog(conn).ages(now)
        for key, entry in groups.items():
            report.groups[key].conversations = entry["conversations"]
        conversations = CounterMetricFamily("gateway_conversations", "Conversations opened", labels=LABELS)
        switches = CounterMetricFamily(
            "gateway_channel_switches", "Customer messages on another channel than their previous one in the same "
                                        "conversation", labels=LABELS)
        for labels, entry in sorted(groups.items()):
            conversations.add_metric(list(labels), entry["conversations"])
            switches.add_metric(list(labels), entry["switches"])
        messages = CounterMetricFamily("gateway_messages", "Messages stored, both ways, per channel",
                                       labels=["channel", "connector", "direction"])
        for (channel, connector), figures in report.by_channel().items():
            messages.add_metric([channel, connector, "inbound"], figures.messages_in)
            messages.add_metric([channel, connector, "outbound"], figures.messages_out)
        acks = CounterMetricFamily("gateway_acknowledgements_sent", "Acknowledgements sent", labels=LABELS)
        answers = CounterMetricFamily("gateway_satisfaction_answers", "Satisfaction ratings received", labels=LABELS)
        points = CounterMetricFamily("gateway_satisfaction_points", "Sum of the 1-5 ratings received (divide by "
                                                                    "answers for the average)", labels=LABELS)
        for labels, figures in sorted(report.groups.items()):
            acks.add_metric(list(labels), figures.acknowledgements)
            answers.add_metric(list(labels), figures.survey_answers)
            points.add_metric(list(labels), figures.rating_sum)
        open_dead = GaugeMetricFamily("gateway_dead_letters_open", "Dead letters neither replayed nor discarded",
                                      labels=["target"])
        for target, count in sorted(dead.items()):
            open_dead.add_metric([target], count)
        age = GaugeMetricFamily("gateway_backlog_age_seconds", "Age of the oldest row waiting in a queue",
                                labels=["queue", "name"])
        for (queue, name), seconds in waiting.items():
            age.add_metric([queue, name], seconds)
        return [conversations, messages, switches, acks, answers, points, open_dead, age,
                _histogram("gateway_first_response_seconds", "From a conversation's first customer message to the "
                           "first agent reply (open seconds where a kpis calendar applies)",
                           {k: v["first_response"] for k, v in groups.items()}),
                _histogram("gateway_resolution_seconds", "From a conversation's first customer message to its "
                           "ticket solved (open seconds where a kpis calendar applies)",
                           {k: v["resolution"] for k, v in groups.items()})]
