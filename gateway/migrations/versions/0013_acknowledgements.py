"""automatic acknowledgements: one row per conversation, and public comments in the notes queue

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acknowledgements",
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("crm", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("outbound_id", sa.String(length=32), nullable=True),
        sa.Column("acknowledged_at", Time, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_acknowledgements")),
    )
    op.create_index("ix_acknowledgements_customer", "acknowledgements", ["customer_id", "status", "acknowledged_at"])
    op.create_index("ix_acknowledgements_outbound", "acknowledgements", ["outbound_id"])
    with op.batch_alter_table("crm_notes") as batch:
        batch.add_column(sa.Column("public", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("crm_notes") as batch:
        batch.drop_column("public")
    op.drop_index("ix_acknowledgements_outbound", table_name="acknowledgements")
    op.drop_index("ix_acknowledgements_customer", table_name="acknowledgements")
    op.drop_table("acknowledgements")
