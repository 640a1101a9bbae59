"""identity resolution: the derived identifiers of a request

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_identities()


def downgrade() -> None:
    downgrade_identities()


# -- identities: the derived identifiers of a request (hashes with the resolution that produced each, kept;
# the raw values sealed while the request runs, wiped with the request's own) --------------------------
def upgrade_identities() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("derived_hashes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("sealed_derived", sa.LargeBinary(), nullable=True))


def downgrade_identities() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("sealed_derived")
        batch.drop_column("derived_hashes")
