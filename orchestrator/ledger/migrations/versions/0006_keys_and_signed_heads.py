"""signing key fingerprints and signed chain heads

The ledger's identity (subject key fingerprint, the entry signed heads start from), every signing key it
has used, signed chain heads, and a signature on the pruning checkpoint.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:00:00
"""

import sqlalchemy as sa
from alembic import op

from orchestrator.ledger.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_identity",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("subject_key_fingerprint", sa.String(64), nullable=True),
        sa.Column("heads_from", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=True),
        sa.Column("signature", sa.Text(), nullable=True),
    )
    # One row from the start: a ledger without it was tampered with. Entries written before this revision
    # have no signed heads; heads are required from here on.
    op.execute("INSERT INTO ledger_identity (id, heads_from) SELECT 1, COALESCE((SELECT MAX(id) FROM audit_log), "
               "(SELECT last_pruned_id FROM audit_checkpoint WHERE id = 1), 0)")
    op.create_table(
        "signing_keys",
        sa.Column("generation", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("key_id", sa.String(16), nullable=False, unique=True),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("previous_signature", sa.Text(), nullable=True),
        sa.Column("own_signature", sa.Text(), nullable=True),
    )
    op.create_table(
        "signed_heads",
        sa.Column("entry_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signed_at", UTCDateTime(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("audit_checkpoint") as batch:
        batch.add_column(sa.Column("key_id", sa.String(16), nullable=True))
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoint") as batch:
        batch.drop_column("signature")
        batch.drop_column("key_id")
    op.drop_table("signed_heads")
    op.drop_table("signing_keys")
    op.drop_table("ledger_identity")
