"""kpis: a conversation's language, first reply, solved time, durations and channel switches, and the indexes
the KPI queries read by period

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _seconds(start: str, end: str) -> str:
    if op.get_bind().dialect.name == "sqlite":
        return f"(julianday({end}) - julianday({start})) * 86400.0"
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("language", sa.String(length=16)))
        batch.add_column(sa.Column("solved_at", Time))
        batch.add_column(sa.Column("first_reply_at", Time))
        batch.add_column(sa.Column("first_response_seconds", sa.Float()))
        batch.add_column(sa.Column("resolution_seconds", sa.Float()))
        batch.add_column(sa.Column("switches", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_conversations_created_at", "conversations", ["created_at"])
    op.create_index("ix_messages_received_at", "messages",
                    ["received_at", "conversation_id", "direction", "connector"])
    op.create_index("ix_dead_letters_created_at", "dead_letters", ["created_at"])
    op.create_index("ix_acknowledgements_acknowledged_at", "acknowledgements", ["acknowledged_at"])
    op.create_index("ix_surveys_answered_at", "surveys", ["answered_at"])
    # existing conversations: the language of their first message that has one; solved when a survey was asked
    language = ("json_extract(m.data, '$.language')" if op.get_bind().dialect.name == "sqlite"
                else "(m.data ->> 'language')")
    op.execute(f"""UPDATE conversations SET language = (
        SELECT {language} FROM messages m WHERE m.conversation_id = conversations.id AND m.direction = 'inbound'
        AND {language} IS NOT NULL ORDER BY m.received_at LIMIT 1)""")
    op.execute("""UPDATE conversations SET solved_at = (
        SELECT min(s.asked_at) FROM surveys s WHERE s.conversation_id = conversations.id)""")
    op.execute("""UPDATE conversations SET first_reply_at = (
        SELECT min(m.received_at) FROM messages m
        WHERE m.conversation_id = conversations.id AND m.thread_rule = 'reply')""")
    # before the upgrade no calendar applied: wall-clock seconds (switches are counted from the upgrade on)
    for column, end in (("first_response_seconds", "first_reply_at"), ("resolution_seconds", "solved_at")):
        op.execute(f"UPDATE conversations SET {column} = {_seconds('created_at', end)} WHERE {end} IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_surveys_answered_at", table_name="surveys")
    op.drop_index("ix_acknowledgements_acknowledged_at", table_name="acknowledgements")
    op.drop_index("ix_dead_letters_created_at", table_name="dead_letters")
    op.drop_index("ix_messages_received_at", table_name="messages")
    op.drop_index("ix_conversations_created_at", table_name="conversations")
    with op.batch_alter_table("conversations") as batch:
        for column in ("switches", "resolution_seconds", "first_response_seconds", "first_reply_at", "solved_at"):
            batch.drop_column(column)
        batch.drop_column("language")
