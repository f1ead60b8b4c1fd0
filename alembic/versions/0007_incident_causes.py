"""incidents name the root incident they were attributed to (causes)

Revision ID: 0007_incident_causes
Revises: 0006_reference_learned_until
Create Date: 2026-12-02 01:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007_incident_causes"
down_revision = "0006_reference_learned_until"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_incidents_parent_id", "incidents", ["parent_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_index("ix_incidents_parent", ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index("ix_incidents_parent")
        batch_op.drop_constraint("fk_incidents_parent_id", type_="foreignkey")
        batch_op.drop_column("parent_id")
