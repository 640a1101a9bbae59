"""Ledger tables: the source of truth. Celery only carries task ids; every decision is read from here.

Changing a table means adding an Alembic revision under ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Every datetime column: UTC-aware in, UTC-aware out, on every backend.

    Values are converted to UTC before they are bound. SQLite stores the wall-clock digits and drops the
    offset, so ``15:36-08:00`` stored as given would read back (and compare in SQL) as 15:36 UTC: a hold
    ending eight hours early. PostgreSQL converts itself, but reads back in the session's zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class DataMapSnapshot(Base):
    """The exact map a request was planned from, so its tasks run against it even if the file changes."""

    __tablename__ = "data_maps"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), default="subject")
    dataset: Mapped[str | None] = mapped_column(String(200), nullable=True)  # scope "dataset": its name
    status: Mapped[str] = mapped_column(String(24), index=True)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    regime: Mapped[str] = mapped_column(String(8), default="gdpr")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    data_map_digest: Mapped[str] = mapped_column(ForeignKey("data_maps.digest"))
    # kind -> hex HMAC-SHA256 of the identifier under the subject key: what the ledger keeps for good.
    subject_hashes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # The raw identifiers, AES-GCM sealed under a key derived from the subject key, held only while the
    # request runs (tasks need them to build selectors) and wiped when it reaches a terminal status.
    sealed_subject: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Identifiers derived by the map's identities (SPEC "Identity resolution"): [{kind, hash, via}] kept,
    # their raw values sealed and wiped exactly like sealed_subject.
    derived_hashes: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    sealed_derived: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Namespaced (store.stored_idempotency_key): api:<token name>:<key>, cli:<key>, event:<digest>.
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True, nullable=True)
    idempotency_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(200), default="cli")
    # The API token name a request was filed under (its role is in `actor`); NULL for the CLI and events.
    # A requester reads only the requests filed under its own name.
    requested_by: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # An admin's go-ahead for a request over a target's max_items (blast radius), or a dataset request.
    approved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A deadline extension (once per request, GDPR Art. 12(3)): due_at moved, with the reason.
    extension_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class RevokedSession(Base):
    """A dashboard session ended by its sign-out: its cookie, even if copied, is refused until it expires."""

    __tablename__ = "revoked_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Task(Base):
    """One planned (request, target) pair."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("request_id", "target", name="uq_tasks_request_target"),
        Index("ix_tasks_status_lease", "status", "lease_expires_at"),
    )
    # Every column has a Python default, so there is nothing to read back after an INSERT. By default the ORM
    # asks for the server defaults anyway (RETURNING), which turns a batch's inserts into one statement of
    # 1,000 rows (780 KB of SQL text that psycopg parses in Python: a fifth of filing's CPU), not a pipeline.
    __mapper_args__ = {"eager_defaults": False}  # noqa: RUF012 - read once by the declarative mapping

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid5(request id, target): deterministic
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)  # topological order in the map
    after: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(24))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    residue: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    level: Mapped[str | None] = mapped_column(String(24), nullable=True)  # erasure level the purge reached
    # Progress of a long purge, reported with its heartbeats: items done / estimated (the pre-purge count).
    progress_done: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_estimated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Items deleted by earlier slices of a long purge that handed its message back (see task_slice_seconds).
    carried_deleted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Approval scope: the count a task waited with (what the admin is shown) and the count an admin approved
    # for it. An approval covers only that task and that many items: a later count above it waits again.
    counted_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    approved_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Set by hand_back, cleared by the next claim: that claim continues a sliced purge (no new count, no new
    # attempt). The ledger knows this, never the message: a message saying "continuation" changes nothing.
    continues: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Set when the task is handed to the broker and renewed while it runs; reconcile re-dispatches a
    # non-terminal task whose lease has run out. NULL: not dispatched yet (waiting for `after`).
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When handing the task to the broker failed (broker unreachable or misconfigured): the task is on record as
    # not dispatched, and reconcile sends it again on its next pass rather than after the lease. Cleared when it
    # is sent again or claimed. NULL: handed over, or not due yet.
    not_dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CompletionRecord(Base):
    """Written once per (request, target), after the purge is verified. Never updated."""

    __tablename__ = "completion_records"
    __table_args__ = (UniqueConstraint("request_id", "target", name="uq_completion_request_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(36))
    deleted: Mapped[int] = mapped_column(Integer)
    residue: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(24))
    verified_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """Append-only, hash-chained trail of everything that happened, with who did it.

    The trail is many chains (``orchestrator.ledger.appends``): one per request, named by its id, and the
    ``ledger`` chain for what belongs to no request (holds, keys, prunes) and for the opening of every
    request's chain. ``seq`` is the entry's gapless position in its chain, assigned by lethe under that
    chain's lock; ``hash`` is SHA-256 over the canonical JSON of the entry including ``prev_hash`` (the hash
    of the entry before it in the same chain): changing, removing or reordering any entry breaks every hash
    after it (``lethe verify-ledger``). ``id`` is assigned by the database: one order to read the chains in
    (a chain's entries are in ``seq`` order in it), not a position, so it may have gaps. The entries written
    before migration 0010 are the ``ledger`` chain's first ones, with ``seq`` equal to their ``id``.
    """

    __tablename__ = "audit_log"
    # On SQLite, AUTOINCREMENT: an id is never used twice, not even after pruning removed the newest entries.
    __table_args__ = (UniqueConstraint("chain", "seq", name="uq_audit_chain_seq"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    request_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    task_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(48))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditCheckpoint(Base):
    """Where the chain starts after retention pruned its oldest entries (one row)."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_pruned_id: Mapped[int] = mapped_column(Integer)
    last_pruned_hash: Mapped[str] = mapped_column(String(64))
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Signed by the signing key: a checkpoint written by anyone else (to hide the oldest entries) fails.
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)


class Certificate(Base):
    """The signed certificate of a completed request, exactly as issued."""

    __tablename__ = "certificates"

    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[str] = mapped_column(Text)  # canonical JSON, signature included
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Tombstone(Base):
    """A subject erased by a completed request, as keyed hashes: data written for them later is erased
    again (``lethe.subject.data_written``). Kept LETHE_TOMBSTONE_DAYS."""

    __tablename__ = "tombstones"
    __table_args__ = (Index("ix_tombstones_hash", "subject_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_hash: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(36))
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class OutboxEvent(Base):
    """An outbound CloudEvent written in the same transaction as the state change it announces, then
    published after commit; so each change is announced once and none is lost."""

    __tablename__ = "outbox"
    # What the publisher asks for: the unpublished events in id order. Without this partial index PostgreSQL
    # walked the primary key past every published event on each call (quadratic in a bulk erasure).
    __table_args__ = (Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL"),
                            sqlite_where=text("published_at IS NULL")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # the CloudEvent, canonical JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)


class DeadLetterCount(Base):
    """How many incoming events went to the dead-letter queue, per reason (for metrics)."""

    __tablename__ = "dead_letter_counts"

    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Hold(Base):
    """A legal hold (Art. 17(3)): the subject's requests wait ``on_hold`` and nothing of theirs is deleted."""

    __tablename__ = "holds"
    __table_args__ = (Index("ix_holds_subject_hash", "subject_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Dataset(Base):
    """A training dataset recorded with `lethe lineage record`: its members are keyed subject hashes."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    digest: Mapped[str] = mapped_column(String(128), primary_key=True)
    members: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DatasetMember(Base):
    """One subject in one dataset. Bulk-loaded (COPY on PostgreSQL); found by one indexed lookup.

    No foreign key to ``datasets``: a per-row check at millions of rows costs a quarter of the load, and
    members are only ever written and replaced by ``Ledger.record_lineage`` together with their dataset.
    """

    __tablename__ = "dataset_members"
    __table_args__ = (Index("ix_dataset_members_subject_hash", "subject_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_name: Mapped[str] = mapped_column(String(200))
    dataset_digest: Mapped[str] = mapped_column(String(128))
    subject_hash: Mapped[str] = mapped_column(String(64))


class LedgerIdentity(Base):
    """The keys a ledger belongs to (one row, made by migration 0006): the subject key's fingerprint (an
    HMAC of a fixed label under the key, never the key), written once at first use, and the first audit
    entry from which signed heads are kept; signed by the first signing key."""

    __tablename__ = "ledger_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heads_from: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)


class SigningKey(Base):
    """Every Ed25519 key the ledger has signed with, oldest first; the highest generation signs now. A new
    generation comes only from a rotation, cross-signed by the key before it and by itself."""

    __tablename__ = "signing_keys"

    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    public_key: Mapped[str] = mapped_column(Text)  # PEM
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Over the rotation statement (keys.rotation_statement): by the previous key, and by this one.
    previous_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    own_signature: Mapped[str | None] = mapped_column(Text, nullable=True)


class SignedHead(Base):
    """An audit entry's hash signed with the signing key: the chain up to it cannot be rewritten, even with
    every hash recomputed, without the signature failing."""

    __tablename__ = "signed_heads"

    entry_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    signature: Mapped[str] = mapped_column(Text)
