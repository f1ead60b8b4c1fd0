"""performance history: metric values per model version and event-time window

Revision ID: 0005_performance
Revises: 0004_alert_outbox
Create Date: 2026-11-23 16:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005_performance"
down_revision = "0004_alert_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "performance",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=500), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.Double(), nullable=False),
        sa.Column("window_end", sa.Double(), nullable=False),
        sa.Column("metric", sa.String(length=50), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("ci_low", sa.Double(), nullable=True),
        sa.Column("ci_high", sa.Double(), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("performance", schema=None) as batch_op:
        batch_op.create_index(
            "ix_performance_model_window", ["model", "window_start"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("performance", schema=None) as batch_op:
        batch_op.drop_index("ix_performance_model_window")
    op.drop_table("performance")
