"""a learned reference remembers, per source partition, where the events it took end

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-29 23:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0008"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reference_data", schema=None) as batch_op:
        batch_op.add_column(sa.Column("learned_until", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reference_data", schema=None) as batch_op:
        batch_op.drop_column("learned_until")
