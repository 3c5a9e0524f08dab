"""tombstones of erased customers

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tombstones",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("identifier_hash", sa.String(length=64), nullable=False),
        sa.Column("erased_at", Time, nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tombstones")),
    )
    op.create_index("ix_tombstones_identifier_hash", "tombstones", ["identifier_hash"])


def downgrade() -> None:
    op.drop_index("ix_tombstones_identifier_hash", table_name="tombstones")
    op.drop_table("tombstones")
