"""a learned reference remembers, per source partition, where the events it took end

Revision ID: 0006_reference_learned_until
Revises: 0005_performance
Create Date: 2026-11-29 23:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0006_reference_learned_until"
down_revision = "0005_performance"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reference_data", schema=None) as batch_op:
        batch_op.add_column(sa.Column("learned_until", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reference_data", schema=None) as batch_op:
        batch_op.drop_column("learned_until")
