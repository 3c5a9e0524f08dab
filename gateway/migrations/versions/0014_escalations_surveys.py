"""escalation clocks and satisfaction surveys

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Id, Time

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _queue_columns() -> list[sa.Column[object]]:
    return [sa.Column("attempts", sa.Integer(), nullable=False), sa.Column("available_at", Time, nullable=False),
            sa.Column("lease_owner", sa.String(length=64), nullable=True),
            sa.Column("lease_until", Time, nullable=True)]


def upgrade() -> None:
    op.create_table(
        "sla_clocks",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("open_key", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("due_at", Time, nullable=False),
        *_queue_columns(),
        sa.Column("crm_done_at", Time, nullable=True),
        sa.Column("notify_started_at", Time, nullable=True),
        sa.Column("escalated_at", Time, nullable=True),
        sa.Column("answered_at", Time, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_clocks")),
        sa.UniqueConstraint("open_key", name=op.f("uq_sla_clocks_open_key")),
    )
    op.create_index("ix_sla_clocks_due", "sla_clocks", ["status", "due_at"])
    op.create_index("ix_sla_clocks_conversation", "sla_clocks", ["conversation_id", "status"])
    op.create_table(
        "surveys",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("crm", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("asked_at", Time, nullable=False),
        sa.Column("answered_at", Time, nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("answer_message_id", sa.String(length=32), nullable=True),
        *_queue_columns(),
        sa.Column("written_at", Time, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_surveys")),
        sa.UniqueConstraint("crm", "conversation_id", name="uq_surveys_crm_conversation"),
    )
    op.create_index("ix_surveys_customer", "surveys", ["customer_id", "channel", "status"])
    op.create_index("ix_surveys_claim", "surveys", ["status", "available_at"])


def downgrade() -> None:
    op.drop_index("ix_surveys_claim", table_name="surveys")
    op.drop_index("ix_surveys_customer", table_name="surveys")
    op.drop_table("surveys")
    op.drop_index("ix_sla_clocks_conversation", table_name="sla_clocks")
    op.drop_index("ix_sla_clocks_due", table_name="sla_clocks")
    op.drop_table("sla_clocks")
