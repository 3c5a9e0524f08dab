"""provider statuses

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "provider_statuses",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("connector", sa.String(length=64), nullable=False),
        sa.Column("provider_message_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", Time, nullable=False),
        sa.Column("extras", sa.JSON(), nullable=False),
        sa.Column("inbox_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_statuses")),
        sa.UniqueConstraint("connector", "provider_message_id", "status",
                            name="uq_provider_statuses_message_status"),
    )


def downgrade() -> None:
    op.drop_table("provider_statuses")
