"""The console's landing page: the KPIs per channel for the last day, week and month (gateway.kpis), what is stuck
now (open dead letters, the oldest waiting rows), and per channel a chart of each of the last 30 days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, render_template
from markupsafe import Markup

from gateway.calendars import build_calendars
from gateway.cli_kpis import report_json
from gateway.console.charts import bars
from gateway.kpis import Report, backlog, compute, open_dead_letters, percentile
from gateway.storage.db import utcnow

PERIODS = (("Last 24 hours", timedelta(days=1)), ("Last 7 days", timedelta(days=7)),
           ("Last 30 days", timedelta(days=30)))


@dataclass(frozen=True)
class Overview:
    now: datetime
    reports: list[tuple[str, Report]]
    open_dead: dict[str, int]
    backlog: dict[tuple[str, str], float]
    charts: list[tuple[str, str, list[Markup]]]  # channel type, channel name, charts


def duration(seconds: float | None) -> str:
    """A duration as a support lead reads it: 45 s, 12 min, 3.5 h, 2.1 d."""
    if seconds is None:
        return "\u2013"  # an en dash: no figure
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 86400 else f"{seconds / 86400:.1f} d"


def _charts(report: Report, end: datetime) -> list[tuple[str, str, list[Markup]]]:
    days = [(end - timedelta(days=back)).date() for back in range(29, -1, -1)]
    labels = [day.isoformat() for day in days]
    charts = []
    for (channel, connector), by_day in sorted(report.days.items()):
        per_day: list[Any] = [by_day.get(day) for day in days]
        conversations = [float(f.conversations) if f else 0.0 for f in per_day]
        first = [_minutes(percentile(f.first_responses, 0.5)) if f else None for f in per_day]
        charts.append((channel, connector, [
            bars(f"{connector}: conversations per day", labels, conversations),
            bars(f"{connector}: first response p50 per day (minutes)", labels, first, " min")]))
    return charts


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


def overview(now: datetime | None = None) -> Overview:
    now = now or utcnow()
    settings = g.runtime.config.settings
    with g.runtime.engine.connect() as conn:
        reports = compute(conn, [(now - span, now) for _, span in PERIODS], settings.kpis,
                          build_calendars(settings.business_hours), by_day=True)
        open_dead = open_dead_letters(conn)
        ages = backlog(conn).ages(now)
    return Overview(now, [(title, report) for (title, _), report in zip(PERIODS, reports, strict=True)],
                    open_dead, ages, _charts(reports[-1], now))


def register(bp: Blueprint) -> None:
    @bp.get("/")
    def overview_page() -> str:
        return render_template("console/overview.html", o=overview(), duration=duration)

    @bp.get("/api/kpis")
    def kpis_json() -> Response:
        found = overview()
        return jsonify(periods={title: report_json(report, found.open_dead, found.backlog)
                                for title, report in found.reports})
