"""retention: markers of what was removed, and indexes on the times retention goes by

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_inbox_retention", "inbox", ["payload_removed_at", "received_at"]),
    ("ix_messages_text_retention", "messages", ["text_removed_at", "received_at"]),
    ("ix_messages_attachments_retention", "messages", ["attachments_removed_at", "received_at"]),
    ("ix_conversations_last_activity_at", "conversations", ["last_activity_at"]),
    ("ix_delivery_log_created_at", "delivery_log", ["created_at"]),
    ("ix_send_log_created_at", "send_log", ["created_at"]),
    ("ix_provider_statuses_occurred_at", "provider_statuses", ["occurred_at"]),
]


def upgrade() -> None:
    op.add_column("inbox", sa.Column("payload_removed_at", Time, nullable=True))
    op.add_column("messages", sa.Column("text_removed_at", Time, nullable=True))
    op.add_column("messages", sa.Column("attachments_removed_at", Time, nullable=True))
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_column("messages", "attachments_removed_at")
    op.drop_column("messages", "text_removed_at")
    op.drop_column("inbox", "payload_removed_at")
