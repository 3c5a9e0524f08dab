"""messages: drop the index on conversation_id alone; ix_messages_conversation_direction starts with it, so every
look-up by conversation uses that one, and each stored message updates one index fewer

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_messages_conversation_id", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_conversation_id", "messages", ["conversation_id"])
