"""Selector plumbing every target shares: read-only queries into the application's database (S3's
``keys_query``, Qdrant's and LanceDB's ``ids_query``), the engine cache behind them and the SQL target,
the ``match`` validator, and the canonical-integer rule by which a value selects an integer field.

A query's SQL is checked when the map loads (workers/targets/sql_check.py); at run time it goes through a
read-only session with a statement timeout (PostgreSQL: ``default_transaction_read_only`` and
``statement_timeout``; MySQL/MariaDB: a read-only session and ``max_execution_time``/``max_statement_time``;
SQLite: ``query_only`` and a progress handler that interrupts a statement past its deadline).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import text

from workers.targets.base import PermanentError, RetryableError, require_placeholder
from workers.targets.sql_check import check_read_query, dialect_of

DEFAULT_TIMEOUT_SECONDS = 30.0
SQLITE_PROGRESS_STEPS = 10_000  # SQLite VM instructions between two deadline checks


class KeysQuery(BaseModel):
    """A read-only lookup: the first column of every row is a key (or id) of the subject's items."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="SQLAlchemy URL of the application database holding the keys.")
    sql: str = Field(description="SELECT returning keys in its first column; :kind parameters bound, pinned "
                                 "by column = :kind in the WHERE (docs/sql-safety.md).")
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=3600,
                                   description="The database cancels the query after this long.")

    @field_validator("sql")
    @classmethod
    def _read_only(cls, sql: str, info: ValidationInfo) -> str:
        check_read_query(sql, dialect_of(info.data.get("url")), what="sql")
        return sql

    def parameters(self) -> set[str]:
        return set(text(self.sql).compile().params)

    def values(self, subject: Mapping[str, str], batch: int, what: str) -> Iterator[Any]:
        """The first column of each row, read ``batch`` rows at a time. A database that cannot be reached
        or gave up (``unreachable``: a timeout is an OperationalError) is RetryableError; the database
        refusing this subject's value (a DataError for ``abc`` bound to an integer, a ProgrammingError) is
        PermanentError, which no retry mends. Both name only the error's type (its text may hold data)."""
        params = {name: subject[name] for name in self.parameters()}
        try:
            with engine(self.url, read_only=True, timeout_seconds=self.timeout_seconds).connect() as conn:
                for row in conn.execute(text(self.sql), params).yield_per(batch):
                    yield row[0]
        except Exception as exc:  # the driver's error (QueryCanceled for a timeout), never its text
            name = type(getattr(exc, "orig", None) or exc).__name__
            if unreachable(exc):
                raise RetryableError(f"{what} failed: {name}") from None
            raise PermanentError(f"{what} was refused by its database for this subject's value ({name})") from None


def unreachable(exc: BaseException) -> bool:
    """The database could not be reached or gave up (the statement is not at fault, a retry may answer):
    OperationalError (also a statement timeout) and InterfaceError, an invalidated connection, an
    exhausted pool or a socket error. Anything else (DataError, ProgrammingError, …) is the value's."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.DBAPIError):
        return isinstance(exc, sa.OperationalError | sa.InterfaceError) or exc.connection_invalidated
    return isinstance(exc, sa.TimeoutError | sa.DisconnectionError | OSError)


def check_match(match: dict[str, str] | None, name: re.Pattern[str], noun: str, plain: str,
                field: str = "match") -> dict[str, str] | None:
    """The rule of every selector by field equality (``match``, sql's ``where``), checked when the map
    loads: at least one field, each a plain ``name`` (``plain`` says what that is), and an {identifier}
    placeholder somewhere, or it would match every subject."""
    if match is None:
        return None
    if not match:
        raise ValueError(f"{field} must name at least one {noun}")
    bad = [key for key in match if not name.fullmatch(key)]
    if bad:
        raise ValueError(f"{field} {noun} {bad[0]!r} is not a plain {plain}")
    require_placeholder(field, match)
    return match


CANONICAL_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def canonical_integer(text: str) -> int | None:
    """The integer ``text`` spells in canonical decimal (``12``, ``-3``), else None: ``012``, ``+12``,
    ``12.0``, ``1_2``, ``-0`` and text with spaces spell none, so an identifier selects exactly one integer
    or fails, never a near one (``012`` is not 12)."""
    if not CANONICAL_INTEGER.fullmatch(text) or text == "-0":
        return None
    return int(text)


# -- engines ----------------------------------------------------------------------------------------
_engines: dict[tuple[str, bool, float], Any] = {}
_engines_lock = threading.Lock()


def normal_url(url: str) -> str:
    """The URL as SQLAlchemy is given it: the same postgresql:// handling as the ledger's."""
    from orchestrator.config import Settings

    return Settings(database_url=url).database_url


def engine(url: str, *, read_only: bool, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Any:
    """One SQLAlchemy engine per (URL, mode, timeout) per process; every statement it runs is cancelled
    by the database after ``timeout_seconds``, and a ``read_only`` engine's sessions cannot write."""
    from sqlalchemy import create_engine, event

    url = normal_url(url)
    key = (url, read_only, timeout_seconds)
    with _engines_lock:
        if key in _engines:
            return _engines[key]
        millis = max(1, int(timeout_seconds * 1000))
        dialect = dialect_of(url)
        if dialect == "postgres":
            options = f"-c statement_timeout={millis}"
            if read_only:
                options += " -c default_transaction_read_only=on"
            # prepare_threshold None: no server-side prepared statements, so every statement is planned
            # for its values (a generic plan for "ctid = ANY(:ctids) AND owner_id = :o" may scan the
            # whole index instead of fetching the listed rows).
            created = create_engine(url, pool_pre_ping=True,
                                    connect_args={"options": options, "prepare_threshold": None})
        else:
            created = create_engine(url, pool_pre_ping=True)
            if dialect == "sqlite":
                _sqlite_session(created, read_only, timeout_seconds)
            elif dialect == "mysql":
                def on_connect(dbapi_conn: Any, _record: Any) -> None:
                    cursor = dbapi_conn.cursor()
                    version = _first(cursor, "SELECT VERSION()")
                    if "mariadb" in str(version).lower():
                        cursor.execute(f"SET SESSION max_statement_time = {timeout_seconds:.3f}")
                    else:
                        cursor.execute(f"SET SESSION max_execution_time = {millis}")  # SELECTs only
                    if read_only:
                        cursor.execute("SET SESSION TRANSACTION READ ONLY")
                    cursor.close()

                event.listen(created, "connect", on_connect)
        _engines[key] = created
        return created


def _first(cursor: Any, sql: str) -> Any:
    cursor.execute(sql)
    row = cursor.fetchone()
    return row[0] if row else None


def _sqlite_session(created: Any, read_only: bool, timeout_seconds: float) -> None:
    """SQLite has no statement timeout: a progress handler interrupts a statement past its deadline
    (set when it starts). Foreign keys are enforced, as the schema declares them; deleted content is
    overwritten (secure_delete) rather than left in free pages."""
    from sqlalchemy import event

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        deadline = _record.info["deadline"] = {"at": float("inf")}
        dbapi_conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline["at"] else 0,
                                        SQLITE_PROGRESS_STEPS)
        dbapi_conn.execute("PRAGMA foreign_keys = ON")
        dbapi_conn.execute("PRAGMA secure_delete = ON")
        if read_only:
            dbapi_conn.execute("PRAGMA query_only = ON")

    def before_execute(conn: Any, _cursor: Any, _stmt: Any, _params: Any, _ctx: Any, _many: Any) -> None:
        if "deadline" in conn.info:  # the connection record's info, set on connect
            conn.info["deadline"]["at"] = time.monotonic() + timeout_seconds

    event.listen(created, "connect", on_connect)
    event.listen(created, "before_cursor_execute", before_execute)


def dispose_engine(url: str) -> None:
    """Close every pooled connection to ``url`` (a test does this before dropping its database)."""
    url = normal_url(url)
    with _engines_lock:
        for key in [k for k in _engines if k[0] == url]:
            _engines.pop(key).dispose()
