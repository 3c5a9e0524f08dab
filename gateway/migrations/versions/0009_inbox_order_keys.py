"""inbox order keys: a conversation's later rows wait behind an earlier one held by a dead worker

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("keyed", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_inbox_unkeyed", "inbox", ["status", "keyed", "id"])
    op.create_table(
        "inbox_keys",
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("inbox_id", "key", name=op.f("pk_inbox_keys")),
    )
    op.create_index("ix_inbox_keys_key", "inbox_keys", ["key", "inbox_id"])


def downgrade() -> None:
    op.drop_index("ix_inbox_keys_key", table_name="inbox_keys")
    op.drop_table("inbox_keys")
    op.drop_index("ix_inbox_unkeyed", table_name="inbox")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("keyed")
