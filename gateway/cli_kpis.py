"""``gateway kpis``: the KPIs of a period per channel, as a table or JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from gateway.cli_support import config_option, load

_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d`` or ``4w``."""
    match = _SINCE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r} is not a period such as 24h, 7d or 4w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date or time such as 2026-03-01 or 2026-03-01T09:00") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h" if seconds < 86400 else f"{seconds / 86400:.1f}d"


def report_json(report: Any, open_dead: dict[str, int], backlog_ages: dict[tuple[str, str], float]) -> dict[str, Any]:
    """The report as JSON: totals, per channel, per channel and language, dead letters and backlog."""
    return {
        "from": report.start.isoformat() if report.start else None, "to": report.end.isoformat(),
        "total": report.total().summary(),
        "channels": [{"channel": channel, "connector": connector, "calendar": report.calendars.get(connector),
                      **figures.summary()} for (channel, connector), figures in report.by_channel().items()],
        "languages": [{"channel": channel, "connector": connector, "language": language,
                       **{k: v for k, v in figures.summary().items() if not k.startswith("messages_")}}
                      for (channel, connector, language), figures in sorted(report.groups.items())],
        "dead_letters": {"new": report.dead_letters, "open": open_dead},
        "backlog_age_seconds": [{"queue": queue, "name": name, "seconds": round(seconds, 1)}
                                for (queue, name), seconds in backlog_ages.items()],
    }


@click.command("kpis")
@config_option
@click.option("--since", "since", default=None, help="A period ending now: 24h, 7d (the default), 4w.")
@click.option("--from", "start", default=None, help="Start (UTC unless an offset is given): 2026-03-01.")
@click.option("--to", "end", default=None, help="End, excluded (default now): 2026-03-08.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def kpis_command(config_path: Path, since: str | None, start: str | None, end: str | None, as_json: bool) -> None:
    """Conversations, first response and resolution times, channel switches, acknowledgements, satisfaction, dead
    letters and backlog per channel for a period."""
    from gateway.calendars import build_calendars
    from gateway.kpis import backlog, compute, open_dead_letters
    from gateway.runtime import storage_url
    from gateway.storage.db import make_engine, utcnow

    if since and (start or end):
        raise click.UsageError("give --since or --from/--to, not both")
    now = utcnow()
    until = _moment(end) if end else now
    begin = _moment(start) if start else until - parse_since(since or "7d")
    if begin >= until:
        raise click.UsageError("--from must come before --to")
    config = load(config_path)
    settings = config.settings
    engine = make_engine(storage_url(config))
    try:
        with engine.connect() as conn:
            report, = compute(conn, [(begin, until)], settings.kpis, build_calendars(settings.business_hours))
            open_dead = open_dead_letters(conn)
            ages = backlog(conn).ages(now)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report_json(report, open_dead, ages), indent=2))
        return
    click.echo(f"KPIs from {begin:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC")
    header = (f"{'channel':<10} {'name':<16} {'conv':>6} {'in':>7} {'out':>7} {'1st p50':>8} {'1st p90':>8} "
              f"{'res p50':>8} {'switch':>6} {'acks':>6} {'csat':>9} {'calendar'}")
    click.echo(header)
    rows = [*report.by_channel().items(), (("all", ""), report.total())]
    for (channel, connector), figures in rows:
        s = figures.summary()
        csat = f"{s['satisfaction_average']}/{s['satisfaction_answers']}" if s["satisfaction_answers"] else "-"
        click.echo(f"{channel:<10} {connector:<16} {s['conversations']:>6} {s['messages_in']:>7} "
                   f"{s['messages_out']:>7} {_duration(s['first_response_p50']):>8} "
                   f"{_duration(s['first_response_p90']):>8} {_duration(s['resolution_p50']):>8} "
                   f"{s['channel_switches']:>6} {s['acknowledgements']:>6} {csat:>9} "
                   f"{report.calendars.get(connector) or ('-' if connector else '')}")
    click.echo(f"dead letters: {sum(report.dead_letters.values())} new, {sum(open_dead.values())} open")
    for (queue, name), seconds in ages.items():
        click.echo(f"oldest waiting in {queue} ({name}): {_duration(seconds)}")
