"""inbox, outbox and sends: partial indexes of pending rows, so a claim walks the backlog in id order from its oldest
pending row instead of from the table's oldest row, and finds the lowest pending id of each row's conversation
without reading the conversation's settled rows

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'pending'")
_INDEXES = (
    ("ix_inbox_pending", "inbox", ["id"]),
    ("ix_outbox_pending", "outbox", ["id"]),
    ("ix_outbox_pending_order", "outbox", ["crm", "conversation_id", "id"]),
    ("ix_sends_pending", "sends", ["id"]),
    ("ix_sends_pending_order", "sends", ["conversation_id", "id"]),
)


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, postgresql_where=_PENDING, sqlite_where=_PENDING)


def downgrade() -> None:
    for name, table, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
