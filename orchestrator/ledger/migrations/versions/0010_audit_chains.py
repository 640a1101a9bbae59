"""audit chains: one per request and the ledger's own, so writers of different requests never wait on each other

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 13:00:00

Every entry so far was one global chain whose position was ``id``. They become the ``ledger`` chain's first
entries with ``seq = id``: their hashes (which cover ``id``, read as ``seq`` on the ledger chain) and the
signed heads and checkpoint over them stay valid, and verify-ledger checks them exactly as before. From here
on ``id`` comes from the database (a sequence on PostgreSQL, the rowid on SQLite), never from lethe.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("chain", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    op.execute("UPDATE audit_log SET chain = 'ledger', seq = id")
    sqlite = op.get_bind().dialect.name == "sqlite"
    # SQLite: the table is rebuilt with AUTOINCREMENT, so an id is never reused after pruning.
    with op.batch_alter_table("audit_log", recreate="always" if sqlite else "auto",
                              table_kwargs={"sqlite_autoincrement": True} if sqlite else {}) as batch:
        batch.alter_column("chain", existing_type=sa.String(length=36), nullable=False)
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_audit_chain_seq", ["chain", "seq"])
    if op.get_bind().dialect.name == "postgresql":
        # Ids continue after every id ever used, the pruned ones included (a signed head names its entry by id).
        op.execute("CREATE SEQUENCE audit_log_id_seq OWNED BY audit_log.id")
        op.execute("SELECT setval('audit_log_id_seq', GREATEST(COALESCE((SELECT MAX(id) FROM audit_log), 0), "
                   "COALESCE((SELECT MAX(last_pruned_id) FROM audit_checkpoint), 0), 0) + 1, false)")
        op.execute("ALTER TABLE audit_log ALTER COLUMN id SET DEFAULT nextval('audit_log_id_seq')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE audit_log ALTER COLUMN id DROP DEFAULT")
        op.execute("DROP SEQUENCE audit_log_id_seq")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_chain_seq", type_="unique")
        batch.drop_column("seq")
        batch.drop_column("chain")
