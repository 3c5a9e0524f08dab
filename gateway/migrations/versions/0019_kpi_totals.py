"""kpi_totals: the all-time figures /metrics reports, kept by triggers as rows are added, changed and removed

Messages per (connector, direction), sent acknowledgements and conversations (with their channel switches and
first response and resolution times, bucketed as /metrics buckets them) per the conversation's channel, connector and
language. Triggers keep them whoever writes or deletes (the pipeline, acknowledgements, replies, surveys, retention,
erasure, a bulk load), so a cold /metrics read sums a few hundred rows instead of counting every message again.
On PostgreSQL each connection adds to rows of its own (``shard`` is its backend's pid), so concurrent transactions
never wait for each other on a total; /metrics folds the rows of ended connections into shard 0.

SQLite has no insert trigger on messages: any trigger makes SQLite journal each statement of its table (about 20 us
an insert, a few percent of the pipeline's CPU). There the totals hold the messages up to the rowid in
``kpi_counted``; /metrics counts the rows above it and moves the mark (``gateway.kpis``). Deleting or changing a
counted message still goes through the triggers, as do conversations and acknowledgements.

A later batch migration that copies messages, acknowledgements or conversations (SQLite) drops their triggers: it
must create them again (``create_triggers``).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# seconds, as gateway.kpi_metrics.BUCKETS: a minute, 5 and 15 minutes, an hour, 4 and 8 hours, a day, 3 days, a week
BUCKETS = (60.0, 300.0, 900.0, 3600.0, 14400.0, 28800.0, 86400.0, 259200.0, 604800.0)
KEY = ("kind", "channel", "connector", "language", "direction", "first_bucket", "resolution_bucket")
VALUES = ("events", "switches", "first_sum", "resolution_sum")
EVENTS = ("INSERT", "DELETE", "UPDATE")
# an update trigger runs only when one of these changed
WATCHED = {
    "messages": ("connector", "direction"),
    "acknowledgements": ("conversation_id", "status"),
    "conversations": ("id", "channel", "connector", "language", "first_response_seconds", "resolution_seconds",
                      "switches"),
}


def _bucket(column: str) -> str:
    steps = " ".join(f"WHEN {column} <= {bound!r} THEN {index}" for index, bound in enumerate(BUCKETS))
    return f"CASE WHEN {column} IS NULL THEN -1 {steps} ELSE {len(BUCKETS)} END"


def _language(column: str) -> str:
    return f"CASE WHEN {column} IS NULL OR {column} = '' THEN 'und' ELSE {column} END"


def _shard(dialect: str) -> str:
    return "pg_backend_pid()" if dialect == "postgresql" else "0"


def _add(dialect: str, select: str) -> str:
    """Adds the rows of ``select`` (the KEY columns, then the VALUES) to this connection's totals."""
    updates = ", ".join(f"{name} = kpi_totals.{name} + excluded.{name}" for name in VALUES)
    names = ", ".join((*KEY, *VALUES))
    return (f"INSERT INTO kpi_totals ({names}, shard) SELECT {names}, {_shard(dialect)} FROM ({select}) AS added "
            f"WHERE true ON CONFLICT ({', '.join(KEY)}, shard) DO UPDATE SET {updates}")


def _message(row: str, sign: int) -> str:
    return (f"SELECT 'message' AS kind, '' AS channel, {row}.connector AS connector, '' AS language, "
            f"{row}.direction AS direction, -1 AS first_bucket, -1 AS resolution_bucket, {sign} AS events, "
            "0 AS switches, 0.0 AS first_sum, 0.0 AS resolution_sum")


def _ack_values(sign: int) -> str:
    return (f"'' AS direction, -1 AS first_bucket, -1 AS resolution_bucket, {sign} AS events, 0 AS switches, "
            "0.0 AS first_sum, 0.0 AS resolution_sum")


def _ack_row(row: str, sign: int) -> str:
    """An acknowledgement row, when sent, under its conversation's channel and language."""
    return (f"SELECT 'ack' AS kind, c.channel AS channel, c.connector AS connector, {_language('c.language')} AS "
            f"language, {_ack_values(sign)} FROM conversations c WHERE c.id = {row}.conversation_id "
            f"AND {row}.status = 'sent'")


def _conversation_ack(row: str, sign: int) -> str:
    """A conversation row's sent acknowledgement, if it has one, under the row's channel and language."""
    return (f"SELECT 'ack' AS kind, {row}.channel AS channel, {row}.connector AS connector, "
            f"{_language(f'{row}.language')} AS language, {_ack_values(sign)} FROM acknowledgements a "
            f"WHERE a.conversation_id = {row}.id AND a.status = 'sent'")


def _conversation(row: str, sign: int) -> str:
    return (f"SELECT 'conversation' AS kind, {row}.channel AS channel, {row}.connector AS connector, "
            f"{_language(f'{row}.language')} AS language, '' AS direction, "
            f"{_bucket(f'{row}.first_response_seconds')} AS first_bucket, "
            f"{_bucket(f'{row}.resolution_seconds')} AS resolution_bucket, {sign} AS events, "
            f"{sign} * {row}.switches AS switches, {sign} * COALESCE({row}.first_response_seconds, 0.0) AS first_sum, "
            f"{sign} * COALESCE({row}.resolution_seconds, 0.0) AS resolution_sum")


def _removed_and_added(table: str) -> tuple[list[str], list[str]]:
    """The SELECTs taking a row's part away (OLD) and giving it (NEW). A conversation's acknowledgement is counted
    under the conversation: whichever of the two comes or goes first, the other's trigger finds it or not."""
    if table == "messages":
        return [_message("OLD", -1)], [_message("NEW", 1)]
    if table == "acknowledgements":
        return [_ack_row("OLD", -1)], [_ack_row("NEW", 1)]
    return ([_conversation("OLD", -1), _conversation_ack("OLD", -1)],
            [_conversation("NEW", 1), _conversation_ack("NEW", 1)])


def statements(dialect: str, table: str, event: str) -> list[str]:
    removed, added = _removed_and_added(table)
    selects = {"INSERT": added, "DELETE": removed, "UPDATE": removed + added}[event]
    done = [_add(dialect, select) for select in selects]
    if dialect == "sqlite" and table == "messages" and event == "DELETE":
        # the counted rows at the top gone, the next message would take a rowid at or under the mark
        done.append(f"UPDATE kpi_counted SET to_rowid = {_LAST_MESSAGE} WHERE table_name = 'messages' "
                    f"AND to_rowid > {_LAST_MESSAGE}")
    return done


_LAST_MESSAGE = "(SELECT COALESCE(max(rowid), 0) FROM messages)"
_COUNTED = "OLD.rowid <= (SELECT to_rowid FROM kpi_counted WHERE table_name = 'messages')"


def _events(dialect: str, table: str) -> tuple[str, ...]:
    return ("DELETE", "UPDATE") if dialect == "sqlite" and table == "messages" else EVENTS


def _when(dialect: str, table: str, event: str) -> str:
    differ = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    conditions = [" OR ".join(f"OLD.{column} {differ} NEW.{column}" for column in WATCHED[table])] \
        if event == "UPDATE" else []
    if dialect == "sqlite" and table == "messages":
        conditions.append(_COUNTED)  # a message above the mark is counted as it is when /metrics reaches it
    return f"WHEN {' AND '.join(f'({condition})' for condition in conditions)}" if conditions else ""


def create_triggers(dialect: str, table: str) -> None:
    if dialect == "postgresql":
        branches = " ".join(f"{'IF' if index == 0 else 'ELSIF'} TG_OP = '{event}' THEN "
                            + " ".join(f"{statement};" for statement in statements(dialect, table, event))
                            for index, event in enumerate(EVENTS))
        op.execute(f"CREATE FUNCTION kpi_totals_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   f"{branches} END IF; RETURN NULL; END $$")
    for event in _events(dialect, table):
        name = f"kpi_totals_{table}_{event.lower()}"
        if dialect == "postgresql":
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {_when(dialect, table, event)} "
                       f"EXECUTE FUNCTION kpi_totals_{table}()")
        else:
            body = " ".join(f"{statement};" for statement in statements(dialect, table, event))
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {_when(dialect, table, event)} "
                       f"BEGIN {body} END")


def drop_triggers(dialect: str, table: str) -> None:
    for event in EVENTS:
        op.execute(f"DROP TRIGGER IF EXISTS kpi_totals_{table}_{event.lower()}"
                   + (f" ON {table}" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS kpi_totals_{table}()")


def _backfill(dialect: str) -> None:
    """The totals of the rows already there, in shard 0."""
    names = ", ".join((*KEY, *VALUES))
    for select in (
        "SELECT 'message', '', connector, '', direction, -1, -1, count(*), 0, 0.0, 0.0 FROM messages "
        "GROUP BY connector, direction",
        f"SELECT 'ack', c.channel, c.connector, {_language('c.language')}, '', -1, -1, count(*), 0, 0.0, 0.0 "
        "FROM acknowledgements a JOIN conversations c ON c.id = a.conversation_id WHERE a.status = 'sent' "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7",
        f"SELECT 'conversation', channel, connector, {_language('language')}, '', "
        f"{_bucket('first_response_seconds')}, {_bucket('resolution_seconds')}, count(*), sum(switches), "
        "COALESCE(sum(first_response_seconds), 0.0), COALESCE(sum(resolution_seconds), 0.0) FROM conversations "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7",
    ):
        op.execute(f"INSERT INTO kpi_totals ({names}, shard) SELECT *, 0 FROM ({select}) AS existing")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "kpi_totals",
        sa.Column("kind", sa.String(16), nullable=False),  # message, ack, conversation
        sa.Column("channel", sa.String(16), nullable=False),  # '' for messages
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),  # '' for messages
        sa.Column("direction", sa.String(8), nullable=False),  # '' but for messages
        sa.Column("first_bucket", sa.Integer(), nullable=False),  # index in BUCKETS, -1 unmeasured
        sa.Column("resolution_bucket", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("switches", sa.BigInteger(), nullable=False),
        sa.Column("first_sum", sa.Float(), nullable=False),
        sa.Column("resolution_sum", sa.Float(), nullable=False),
        sa.UniqueConstraint(*KEY, "shard", name="uq_kpi_totals_key"),
    )
    op.create_table(
        "kpi_counted",
        sa.Column("table_name", sa.String(32), primary_key=True),
        sa.Column("to_rowid", sa.BigInteger(), nullable=False),
    )
    if dialect == "sqlite":
        op.execute(f"INSERT INTO kpi_counted (table_name, to_rowid) SELECT 'messages', {_LAST_MESSAGE}")
    _backfill(dialect)
    for table in WATCHED:
        create_triggers(dialect, table)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in WATCHED:
        drop_triggers(dialect, table)
    op.drop_table("kpi_counted")
    op.drop_table("kpi_totals")
