"""approval scope and dispatch state

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- approval scope (issue 17 item 5): per-task counted/approved items; slice state kept by the ledger --
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("counted_items", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("approved_items", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("continues", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    # -- end of approval scope --

    # -- dispatch state (issue 18): tasks whose hand-off to the broker failed are on record as not dispatched --
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_dispatched_at", sa.DateTime(timezone=True), nullable=True))
    # -- end of dispatch state --


def downgrade() -> None:
    # -- dispatch state --
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("not_dispatched_at")
    # -- end of dispatch state --
    # -- approval scope --
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("continues")
        batch_op.drop_column("approved_items")
        batch_op.drop_column("counted_items")
    # -- end of approval scope --
