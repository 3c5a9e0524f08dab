"""crm directory

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_directory",
        sa.Column("crm", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("remote_id", sa.String(length=255), nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("crm", "kind", "value", "remote_id", name=op.f("pk_crm_directory")),
    )
    op.create_index("ix_crm_directory_remote", "crm_directory", ["crm", "remote_id"])
    op.create_index("ix_crm_directory_value", "crm_directory", ["kind", "value"])


def downgrade() -> None:
    op.drop_table("crm_directory")
