"""Alembic environment: lethe always hands in an open connection (see orchestrator.ledger.db.migrate)."""

from alembic import context

from orchestrator.ledger.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
