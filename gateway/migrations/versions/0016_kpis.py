"""kpis: a conversation's language and solved time, and the indexes the KPI queries read by period

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("language", sa.String(length=16)))
        batch.add_column(sa.Column("solved_at", Time))
    op.create_index("ix_conversations_created_at", "conversations", ["created_at"])
    op.create_index("ix_messages_received_at", "messages",
                    ["received_at", "conversation_id", "direction", "connector"])
    op.create_index("ix_messages_replies", "messages", ["conversation_id", "thread_rule", "received_at"])
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


def downgrade() -> None:
    op.drop_index("ix_surveys_answered_at", table_name="surveys")
    op.drop_index("ix_acknowledgements_acknowledged_at", table_name="acknowledgements")
    op.drop_index("ix_dead_letters_created_at", table_name="dead_letters")
    op.drop_index("ix_messages_replies", table_name="messages")
    op.drop_index("ix_messages_received_at", table_name="messages")
    op.drop_index("ix_conversations_created_at", table_name="conversations")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("solved_at")
        batch.drop_column("language")
