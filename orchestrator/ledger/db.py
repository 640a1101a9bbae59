"""Ledger engine and schema migrations (Alembic), run under a lock so many hosts can start at once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant shared by every lethe process: PostgreSQL advisory lock key for migrations.
MIGRATION_LOCK_KEY = 0x1E7E
# Session.info flag: the transaction wiped sealed raw identifiers (a request completed or was cancelled).
WIPED_RAW_VALUES = "lethe_wiped_raw_values"
DATABASE_FILE_MODE = 0o600  # the subject key file lies beside an SQLite ledger: no one else reads either


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _private_database_files(engine.url.database)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # lethe issues BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")  # readers (status, dashboard) do not block the worker
            cur.execute("PRAGMA busy_timeout=30000")
            # Freed bytes are overwritten with zeros: a wiped sealed identifier leaves no copy in a free page.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # Take the write lock up front: a read transaction that later writes would otherwise fail with
            # "database is locked" when another connection wrote in between (WAL snapshot conflict).
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    # A batch of new rows that reads nothing back (requests, tasks) goes as psycopg's executemany (the psycopg
    # dialect's default): one short statement, parsed once and prepared, sent down a pipeline. Do not turn on
    # use_insertmanyvalues_wo_returning: as one multi-row INSERT its 1,000 rows made 780 KB of SQL text that
    # psycopg parses in Python at every batch (filing 1,000 requests took 2.3 s of CPU, against 1.3 s). Rows
    # that read their ids back (audit entries, events) still go as multi-row INSERT ... RETURNING.

    @event.listens_for(engine, "connect")
    def _planner_costs(dbapi_conn: Any, _record: Any) -> None:
        # Every hot statement of the ledger looks up a batch of rows by key, in tables that grow by hundreds of
        # rows a second. With the default random_page_cost (4, a spinning disk's) and statistics that lag that
        # growth, the planner reads tasks, audit_log and completion_records whole instead of by index once
        # they hold some 10,000 rows: a cost per batch that grows with the ledger (measured: the tips, records
        # and lock reads took 60% of PostgreSQL's time at 10k requests). An index read of a cached ledger
        # costs little more than a sequential one; 1.1 says so, for lethe's own sessions only.
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET random_page_cost = 1.1")
        dbapi_conn.commit()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    if engine.dialect.name == "sqlite":

        @event.listens_for(factory, "after_commit")
        def _checkpoint_after_wipe(session: Session) -> None:
            if session.info.pop(WIPED_RAW_VALUES, False):
                checkpoint_wal(engine)

    return factory


def checkpoint_wal(engine: Engine) -> None:
    """Copy the SQLite WAL into the database and truncate it to zero bytes. The WAL keeps every page a
    transaction wrote, so a sealed identifier wiped from the table would otherwise linger in older frames
    (beside the key that unseals it) until SQLite happened to reuse them. Best effort: a reader that holds
    an old snapshot makes this a partial checkpoint, and the next wipe tries again."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cur.close()
    finally:
        raw.close()


def _private_database_files(database: str | None) -> None:
    """Create an SQLite ledger file (and so its -wal and -shm, which SQLite creates with the database's
    mode) readable by its owner only; tighten files an older version created 0644."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, DATABASE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError:
        return  # a directory that does not exist: SQLite reports it when it connects
    for path in (database, f"{database}-wal", f"{database}-shm"):
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, DATABASE_FILE_MODE)
        except OSError:
            continue  # absent, or not ours to change


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _current_and_head(connection: Any) -> tuple[str | None, str | None]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    return current, head


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision. Cheap when it already is (one SELECT)."""
    from alembic import command

    with engine.connect() as conn:
        current, head = _current_and_head(conn)
        conn.rollback()
    if current == head:
        return
    with _migration_lock(engine) as conn:
        command.upgrade(_alembic_config(conn), "head")
        conn.commit()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Any]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    lock_path = Path(f"{database}.migrate.lock") if database and database != ":memory:" else None
    if lock_path is None:
        with engine.connect() as conn:
            yield conn
        return
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
