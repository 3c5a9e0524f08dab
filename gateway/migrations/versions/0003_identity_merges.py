"""identity merges and suggestions

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Time

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("name_key", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("merged_into", sa.String(length=32), nullable=True))
        batch.create_index("ix_customers_name_key", ["name_key"])
        batch.create_index("ix_customers_merged_into", ["merged_into"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("previous_id", sa.String(length=32), nullable=True))
    op.create_table(
        "merges",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("survivor_id", sa.String(length=32), nullable=False),
        sa.Column("absorbed_id", sa.String(length=32), nullable=False),
        sa.Column("evidence", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("undone_at", Time, nullable=True),
        sa.Column("undo_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merges")),
    )
    op.create_index("ix_merges_survivor_id", "merges", ["survivor_id"])
    op.create_index("ix_merges_absorbed_id", "merges", ["absorbed_id"])
    op.create_table(
        "merge_suggestions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("customer_a", sa.String(length=32), nullable=False),
        sa.Column("customer_b", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merge_suggestions")),
        sa.UniqueConstraint("customer_a", "customer_b", name="uq_merge_suggestions_pair"),
    )


def downgrade() -> None:
    op.drop_table("merge_suggestions")
    op.drop_table("merges")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("previous_id")
    with op.batch_alter_table("customers") as batch:
        batch.drop_index("ix_customers_merged_into")
        batch.drop_index("ix_customers_name_key")
        batch.drop_column("merged_into")
        batch.drop_column("name_key")
