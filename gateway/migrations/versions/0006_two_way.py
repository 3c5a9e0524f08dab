"""two-way conversations: message direction, send queue, send log, notes for agents, opt-outs

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Id, Time

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("direction", sa.String(length=8), nullable=False, server_default="inbound"))
    op.create_index("ix_messages_conversation_direction", "messages", ["conversation_id", "direction", "received_at"])
    op.create_table(
        "sends",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("crm", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", Time, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", Time, nullable=True),
        sa.Column("attempt_started_at", Time, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("provider_message_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("sent_at", Time, nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name=op.f("fk_sends_message_id_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sends")),
        sa.UniqueConstraint("message_id", name=op.f("uq_sends_message_id")),
    )
    op.create_index("ix_sends_claim", "sends", ["status", "available_at"])
    op.create_index("ix_sends_order", "sends", ["conversation_id", "id"])
    op.create_index("ix_sends_provider", "sends", ["channel", "provider_message_id"])
    op.create_table(
        "send_log",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("send_id", Id, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=255), nullable=True),
        sa.Column("error_code", sa.String(length=128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_log")),
    )
    op.create_index(op.f("ix_send_log_send_id"), "send_log", ["send_id"])
    op.create_table(
        "crm_notes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("crm", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", Time, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", Time, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("done_at", Time, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_notes")),
        sa.UniqueConstraint("crm", "key", name="uq_crm_notes_crm_key"),
    )
    op.create_index("ix_crm_notes_claim", "crm_notes", ["status", "available_at"])
    op.create_table(
        "opt_outs",
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("keyword", sa.String(length=32), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("channel", "address", name=op.f("pk_opt_outs")),
    )


def downgrade() -> None:
    op.drop_table("opt_outs")
    op.drop_table("crm_notes")
    op.drop_table("send_log")
    op.drop_table("sends")
    op.drop_index("ix_messages_conversation_direction", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("direction")
