"""Prometheus metrics. Several processes (web workers, workers) share them through prometheus-client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set, which ``gateway run`` and ``gateway serve`` do."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECEIVED = Counter("gateway_received_total", "Webhook items stored in the inbox", ["connector"])
DUPLICATES = Counter("gateway_duplicates_total", "Provider retries of items already stored", ["connector"])
REJECTED = Counter("gateway_rejected_total", "Webhook requests refused", ["connector", "reason"])
PROCESSED = Counter("gateway_processed_total", "Inbox items normalised", ["connector", "outcome"])
DELIVERED = Counter("gateway_delivered_total", "Messages written to a CRM", ["crm"])
FAILED = Counter("gateway_delivery_failures_total", "Failed CRM delivery attempts", ["crm", "kind"])
DEAD_LETTERED = Counter("gateway_dead_lettered_total", "Items moved to the dead letters", ["stage", "target"])
SENT = Counter("gateway_replies_sent_total", "Agent replies handed to a channel's provider", ["channel"])
SEND_FAILURES = Counter("gateway_send_failures_total", "Failed reply attempts", ["channel", "kind"])
REPLY_LATENCY = Histogram(
    "gateway_reply_seconds", "From the CRM's reply event stored to the provider's acceptance", ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
ESCALATIONS = Counter("gateway_escalations_total", "Conversations escalated for want of an agent reply", ["rule"])
SURVEYS_ASKED = Counter("gateway_surveys_asked_total", "Satisfaction surveys queued to customers", ["channel"])
SURVEY_RATINGS = Counter("gateway_survey_ratings_total", "Satisfaction ratings received", ["channel", "rating"])
LATENCY = Histogram(
    "gateway_end_to_end_seconds", "From webhook receipt to CRM write", ["crm"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)


class QueueDepthCollector(Collector):
    """Queue depths read from storage at scrape time, so every process reports the same truth."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("gateway_queue_depth", "Items waiting per queue", labels=["queue"])
        for queue, depth in self._depths().items():
            family.add_metric([queue], depth)
        yield family


def render(depths: Callable[[], dict[str, int]], *read_at_scrape: Collector) -> tuple[bytes, str]:
    """The exposition text: this process's (or every process's, in multiprocess mode) metrics plus depths and any
    other collectors that read the database at scrape time (the KPIs)."""
    body = generate_latest(_registry()) + generate_latest(_depth_registry(depths))
    for collector in read_at_scrape:
        registry = CollectorRegistry()
        registry.register(collector)
        body += generate_latest(registry)
    return body, CONTENT_TYPE_LATEST


def samples(name: str) -> list[tuple[dict[str, str], float]]:
    """Each sample called ``name`` (``gateway_rejected_total``) with its labels, as ``render`` would expose it."""
    return [(dict(sample.labels), sample.value) for family in _registry().collect() for sample in family.samples
            if sample.name == name]


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _depth_registry(depths: Callable[[], dict[str, int]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(depths))
    return registry
