"""certain and uncertain delivery failures

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("certain_failures", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("delivery_log") as batch:
        batch.add_column(sa.Column("uncertain", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_log") as batch:
        batch.drop_column("uncertain")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("certain_failures")
