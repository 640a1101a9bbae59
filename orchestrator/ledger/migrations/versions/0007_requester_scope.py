"""requester scope: who filed a request, idempotency keys in one namespace per door, revoked sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:00:00

``requests.requested_by`` (indexed) is the API token name a request was filed under, so a requester reads
only its own requests. Idempotency keys get their namespace (``api:<token name>:<key>``, ``cli:<key>``;
events' ``event:<digest>`` keys keep theirs): an API caller who filed under an event's key no longer holds
that event's place, and a replay of an older API key still finds its request. ``revoked_sessions``: dashboard
sessions ended by a sign-out, refused until their cookie would have expired.
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

API_ACTOR = re.compile(r"api:([A-Za-z0-9_.@+-]{1,64})\((?:requester|operator|admin)\)")


def upgrade() -> None:
    op.create_table("revoked_sessions",
                    sa.Column("sid", sa.String(length=64), nullable=False),
                    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("sid"))
    op.create_index("ix_revoked_sessions_expires_at", "revoked_sessions", ["expires_at"], unique=False)
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_by", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_requests_requested_by", ["requested_by"], unique=False)
    if op.get_bind().dialect.name != "sqlite":  # SQLite does not enforce a VARCHAR's length
        op.alter_column("requests", "idempotency_key", type_=sa.String(length=300),
                        existing_type=sa.String(length=200), existing_nullable=True)

    requests = sa.table("requests", sa.column("id", sa.String), sa.column("actor", sa.String),
                        sa.column("idempotency_key", sa.String), sa.column("requested_by", sa.String))
    bind = op.get_bind()
    rows = bind.execute(sa.select(requests.c.id, requests.c.actor, requests.c.idempotency_key).where(
        requests.c.idempotency_key.is_not(None) | requests.c.actor.like("api:%"))).all()
    for request_id, actor, key in rows:
        api = API_ACTOR.fullmatch(actor or "")
        values: dict[str, str] = {}
        if api is not None:
            values["requested_by"] = api.group(1)
            if key is not None:
                values["idempotency_key"] = f"api:{api.group(1)}:{key}"
        elif key is not None and not ((actor or "").startswith("event:") and key.startswith("event:")):
            values["idempotency_key"] = f"cli:{key}"
        if values:
            bind.execute(sa.update(requests).where(requests.c.id == request_id).values(**values))


def downgrade() -> None:
    op.drop_index("ix_revoked_sessions_expires_at", table_name="revoked_sessions")
    op.drop_table("revoked_sessions")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_requested_by")
        batch_op.drop_column("requested_by")
