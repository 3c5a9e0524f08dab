"""What the channels page shows: per channel and per CRM, the last message, failures, dead letters, and the shared
rate-limit buckets. Read from the database (every process agrees) and, for refused webhooks, from the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from gateway import metrics
from gateway.storage.db import utcnow
from gateway.storage.tables import dead_letters, delivery_log, inbox, outbox, rate_limits, sends


@dataclass
class ChannelStatus:
    name: str
    type: str
    last_received: Any = None
    waiting: int = 0
    failed: int = 0
    open_dead_letters: int = 0
    last_error: str | None = None
    rejected: dict[str, float] = field(default_factory=dict)  # reason -> count, since this process started
    last_sent: Any = None
    send_failures: int = 0


@dataclass
class CrmStatus:
    name: str
    type: str
    last_delivered: Any = None
    pending: int = 0
    open_dead_letters: int = 0
    last_error: str | None = None


@dataclass
class Bucket:
    name: str
    tokens: float
    updated_at: Any
    blocked_until: Any

    @property
    def blocked(self) -> bool:
        return self.blocked_until is not None and self.blocked_until > utcnow()


def _by(conn: Connection, query: Any) -> dict[str, Any]:
    return {row[0]: row[1] for row in conn.execute(query)}


def channel_statuses(conn: Connection, channels: dict[str, str]) -> list[ChannelStatus]:
    """``channels``: name -> connector type, as configured."""
    names = list(channels)
    last = _by(conn, select(inbox.c.connector, func.max(inbox.c.received_at)).where(inbox.c.connector.in_(names))
               .group_by(inbox.c.connector))
    waiting = _by(conn, select(inbox.c.connector, func.count()).where(
        inbox.c.connector.in_(names), inbox.c.status == "pending").group_by(inbox.c.connector))
    failed = _by(conn, select(inbox.c.connector, func.count()).where(
        inbox.c.connector.in_(names), inbox.c.status == "failed").group_by(inbox.c.connector))
    letters = _open_letters(conn, names)
    last_sent = _by(conn, select(sends.c.channel, func.max(sends.c.sent_at)).where(sends.c.channel.in_(names))
                    .group_by(sends.c.channel))
    send_failures = _by(conn, select(sends.c.channel, func.count()).where(
        sends.c.channel.in_(names), sends.c.status.in_(["dead", "blocked"])).group_by(sends.c.channel))
    rejected: dict[str, dict[str, float]] = {}
    for labels, value in metrics.samples("gateway_rejected_total"):
        if labels.get("connector") in channels and value:
            rejected.setdefault(labels["connector"], {})[labels.get("reason", "?")] = value
    out = []
    for name, type_name in channels.items():
        error = conn.execute(select(dead_letters.c.reason).where(
            dead_letters.c.target == name, dead_letters.c.resolution.is_(None))
            .order_by(dead_letters.c.id.desc()).limit(1)).scalar()
        out.append(ChannelStatus(name, type_name, last.get(name), waiting.get(name, 0), failed.get(name, 0),
                                 letters.get(name, 0), error, rejected.get(name, {}), last_sent.get(name),
                                 send_failures.get(name, 0)))
    return out


def crm_statuses(conn: Connection, crms: dict[str, str]) -> list[CrmStatus]:
    names = list(crms)
    last = _by(conn, select(outbox.c.crm, func.max(outbox.c.delivered_at)).where(outbox.c.crm.in_(names))
               .group_by(outbox.c.crm))
    pending = _by(conn, select(outbox.c.crm, func.count()).where(
        outbox.c.crm.in_(names), outbox.c.status == "pending").group_by(outbox.c.crm))
    letters = _open_letters(conn, names)
    out = []
    for name, type_name in crms.items():
        error = conn.execute(select(delivery_log.c.detail).where(
            delivery_log.c.crm == name, delivery_log.c.outcome != "delivered")
            .order_by(delivery_log.c.id.desc()).limit(1)).scalar()
        out.append(CrmStatus(name, type_name, last.get(name), pending.get(name, 0), letters.get(name, 0), error))
    return out


def _open_letters(conn: Connection, names: list[str]) -> dict[str, int]:
    return _by(conn, select(dead_letters.c.target, func.count()).where(
        dead_letters.c.target.in_(names), dead_letters.c.resolution.is_(None)).group_by(dead_letters.c.target))


def buckets(conn: Connection) -> list[Bucket]:
    return [Bucket(r.name, r.tokens, r.updated_at, r.blocked_until)
            for r in conn.execute(select(rate_limits).order_by(rate_limits.c.name))]
