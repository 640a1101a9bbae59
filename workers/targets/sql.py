"""Rows of a relational table (PostgreSQL, MySQL/MariaDB, SQLite): deleted, or masked in place.

Data map::

    - name: app-users
      kind: sql
      url: postgresql://lethe_eraser@db/app   # any SQLAlchemy URL
      table: public.users                     # may be schema-qualified
      where: {id: "{user_id}"}                # an AND of equalities, values always bound
      action: mask                            # or delete (the default)
      mask: {email: null, display_name: "erased"}
      vacuum: true                            # optional, see "Levels"

Statements are built with SQLAlchemy Core from the reflected table: every ``where`` and ``mask`` column
must exist (checked when a task or ``check-map --probe`` first reflects the table: a map loads without a
connection, so unknown columns can only be reported then), and every value is converted to its column's
type before it is bound (``12`` for an integer column; ``12abc`` fails the task, never a silent zero).

A purge runs in batches of ``batch_size`` rows, each its own transaction, so a subject with a million rows
never holds one giant transaction or lock: PostgreSQL ``DELETE … WHERE ctid = ANY(:ctids) AND <where>``
over the ctids listed once into a held cursor, SQLite ``… WHERE rowid IN (SELECT rowid … LIMIT n)`` (the
primary key for a WITHOUT ROWID table), MySQL ``DELETE … LIMIT n``. A mask batch updates only matched
rows that still differ from the mask. The heartbeat runs after each batch, so the purge is resumable:
what a batch removed stays removed.

A delete refused by a foreign key fails the task (PermanentError, not retried) naming the constraint:
order the referencing table's target before this one with ``after``. ``probe`` reports such tables.

Levels. PostgreSQL's DELETE and UPDATE leave the old row versions as dead tuples until VACUUM; InnoDB
keeps delete-marked records until its purge thread runs; so a plain purge is ``invisible`` (no query
returns the rows). ``vacuum: true`` then runs the table's VACUUM on PostgreSQL (outside a transaction) and
reports ``unindexed`` when the table has no dead tuple left afterwards (heap and index entries removed; the
page bytes are reused, not zeroed), else ``invisible``; ``vacuum: full`` runs VACUUM FULL (the table is
rewritten into new files under an exclusive lock) and reports ``bytes_reclaimed`` on the same condition.
MySQL's vacuum (either value) is ``OPTIMIZE TABLE``: ``unindexed``, as InnoDB's undo log may still hold
old row versions until its purge thread runs. On SQLite lethe's connections set ``secure_delete``
(deleted content is overwritten in place) and checkpoint the WAL after the purge: ``bytes_reclaimed`` when
the checkpoint completed, else ``invisible``; ``vacuum`` also rebuilds the file. WAL archives and backups
are copies lethe does not reach here (see replicas and backups in the data map).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.identifiers import Subject
from orchestrator.templates import fill, placeholders_in
from workers.targets import scans
from workers.targets.base import Heartbeat, PermanentError, RetryableError, ScanPage, TargetConfig
from workers.targets.selectors import check_match, engine, normal_url
from workers.targets.sql_types import check_bindable, convert, equals

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
MASK_SCALARS = (str, int, float, bool, type(None))


class SqlConfig(TargetConfig):
    url: str = Field(min_length=1, description="SQLAlchemy URL of the database (PostgreSQL, MySQL, SQLite).")
    table: str = Field(description="Table holding the subject's rows; may be schema-qualified (public.users).")
    where: dict[str, str] = Field(description="column -> templated value: a row matches when every column "
                                              "equals its value (bound, converted to the column's type).")
    action: Literal["delete", "mask"] = Field("delete", description="Delete the rows, or overwrite columns.")
    mask: dict[str, Any] | None = Field(None, description="With action mask: column -> literal value.")
    batch_size: int = Field(5000, ge=1, le=100_000, description="Rows per batch (one transaction each).")
    vacuum: bool | Literal["full"] = Field(False, description="After the purge: the table's VACUUM "
                                                              "(true) or VACUUM FULL (full); see the levels.")
    timeout_seconds: float = Field(300.0, gt=0, le=86_400, description="Statement timeout of each batch.")

    template_fields: ClassVar[tuple[str, ...]] = ("where",)

    @field_validator("table")
    @classmethod
    def _plain_table(cls, table: str) -> str:
        parts = table.split(".")
        if len(parts) > 2 or not all(NAME.fullmatch(p) for p in parts):
            raise ValueError("table must be a plain name or schema.name (letters, digits, _ $)")
        return table

    @field_validator("where")
    @classmethod
    def _where_names_the_subject(cls, where: dict[str, str]) -> dict[str, str]:
        checked = check_match(where, NAME, "column", "column name (letters, digits, _ $)", field="where")
        assert checked is not None
        return checked

    @model_validator(mode="after")
    def _mask_fits_the_action(self) -> SqlConfig:
        if self.action == "delete" and self.mask is not None:
            raise ValueError("mask applies to action: mask only")
        if self.action == "mask":
            if not self.mask:
                raise ValueError("action: mask needs mask: {column: value}")
            for column, value in self.mask.items():
                if not NAME.fullmatch(column):
                    raise ValueError(f"mask column {column!r} is not a plain column name")
                if not isinstance(value, MASK_SCALARS):
                    raise ValueError(f"mask value for {column!r} must be a string, number, boolean or null")
            if placeholders_in(self.mask):  # the mask would write the subject's identifier into the table
                raise ValueError("mask values are literals: no {identifier} placeholders")
        return self

    @property
    def schema_and_name(self) -> tuple[str | None, str]:
        schema, _, name = self.table.rpartition(".")
        return schema or None, name

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        super().check_dataset_selector(selector)
        if set(selector) != {"where"} or not isinstance(selector["where"], dict) or not selector["where"]:
            raise ValueError("a sql dataset selector is {where: {column: value}} only")


class SqlTarget:
    kind: ClassVar[str] = "sql"
    Config: ClassVar[type[TargetConfig]] = SqlConfig
    # resumable: each batch commits on its own; a later call finds only what is left.
    capabilities: ClassVar[frozenset[str]] = frozenset({"resumable", "mask", "vacuum", "probe"})
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, config: SqlConfig):
        self.config = config
        self.engine = engine(config.url, read_only=False, timeout_seconds=config.timeout_seconds)
        self.level = "invisible"
        self._table: Any = None

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        from sqlalchemy import func, select

        table = self.table()
        with self._errors("count"), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(self._pending(subject)))
                       .scalar_one())

    def verify(self, subject: Subject) -> int:
        """Delete: rows the where still matches. Mask: matched rows whose masked columns differ from it."""
        return self.count(subject)

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        if self.engine.dialect.name == "postgresql":
            done = self._purge_listed(subject, heartbeat)
        else:
            done = self._purge_limited(subject, heartbeat)
        self.level = self._finish()
        return done

    def _purge_listed(self, subject: Subject, heartbeat: Heartbeat) -> int:
        """PostgreSQL: the pending rows' ctids are listed once, into a cursor held across transactions
        (one index scan), and deleted or masked batch by batch. Re-scanning for each batch would step over
        every row the earlier batches deleted, whose dead tuples stay until VACUUM: quadratic work. Each
        batch re-checks the selector, so a ctid reused by another row in between is never touched; a row
        moved or added since the listing is left to verify, which reports it, and the retry.

        One connection in autocommit mode does it all, two round trips a batch (FETCH, then the DELETE or
        UPDATE, its own transaction). Batches do not wait for their WAL flush; the synchronous commit at
        the end flushes them all before the purge returns. A crash before it may bring some rows back:
        they match again, and the next slice or verify finds them."""
        from sqlalchemy import and_, bindparam, literal_column, select, text
        from sqlalchemy.types import Text

        table, pending, n = self.table(), self._pending(subject), self.config.batch_size
        listing = select(literal_column("ctid")).select_from(table).where(pending).compile(dialect=self.engine.dialect)
        listed = text("ctid = ANY(CAST(:lethe_ctids AS tid[]))").bindparams(bindparam("lethe_ctids", type_=Text))
        statement = self._write().where(and_(pending, listed))
        done = 0
        with self._errors("list"):
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            with self._errors("list"):
                conn.execute(text("SET synchronous_commit = off"))
                cursor = conn.connection.driver_connection.cursor(name="lethe_purge", withhold=True)
                cursor.execute(str(listing), listing.params)
            with cursor:
                while True:
                    with self._errors("list"):
                        rows = cursor.fetchmany(n)
                    if not rows:
                        break
                    with self._errors(self.config.action):
                        done += conn.execute(statement, {"lethe_ctids": _tid_array(rows)}).rowcount
                    heartbeat(done)  # after the batch's commit: a slice that ends here keeps what it removed
            with self._errors("flush"):
                conn.execute(text("SET synchronous_commit = on"))
                conn.execute(text("SELECT txid_current()"))  # a synchronous commit: every batch is durable
        finally:
            with suppress(Exception):  # the pooled connection goes back as it came
                conn.execute(text("RESET synchronous_commit"))
            conn.close()
        return done

    def _purge_limited(self, subject: Subject, heartbeat: Heartbeat) -> int:
        """SQLite and MySQL: batches of ``… LIMIT n`` until one changes fewer rows. Their deletes leave no
        rows for the next batch's scan to step over (SQLite removes them; InnoDB's index skips them)."""
        statement = self._limited(subject)
        done = 0
        # A mask that a trigger undoes would match the same rows forever: stop after as many batches as
        # the rows counted at the start need, and let verify report what is left.
        budget = -(-self.count(subject) // self.config.batch_size) + 1 if self.config.action == "mask" else None
        while budget is None or budget > 0:
            with self._errors(self.config.action), self.engine.begin() as conn:
                changed = conn.execute(statement).rowcount
            done += changed
            heartbeat(done)  # after the commit: a slice that ends here keeps what it removed
            if changed < self.config.batch_size:
                break
            if budget is not None:
                budget -= 1
        return done

    # -- probe ------------------------------------------------------------------------------------
    def probe(self, earlier: Sequence[TargetConfig]) -> list[str]:
        """Problems before any request: the table or a column missing, a value type lethe cannot bind,
        and (for delete) tables referencing this one by a foreign key that no earlier target erases."""
        from sqlalchemy import inspect

        try:
            table = self.table()
            for column in self.config.where:
                check_bindable(table.c[column], f"sql target {self.config.name}: column {column}")
            self._mask_values()
        except PermanentError as exc:
            return [str(exc)]
        except RetryableError as exc:
            return [f"cannot reach the database: {exc}"]
        if self.config.action != "delete":
            return []
        covered = {(c.schema_and_name[0] or self._default_schema(), c.schema_and_name[1])
                   for c in earlier if isinstance(c, SqlConfig) and normal_url(c.url) == normal_url(self.config.url)}
        problems = []
        with self._errors("probe"):
            for schema, name, fk in self._references(inspect(self.engine)):
                ondelete = str((fk.get("options") or {}).get("ondelete") or "").upper()
                where = f"{schema}.{name}" if schema else name
                label = fk.get("name") or f"{where}({', '.join(fk['constrained_columns'])})"
                if ondelete in ("SET NULL", "SET DEFAULT"):
                    continue
                if ondelete == "CASCADE":
                    problems.append(f"{where} references {self.config.table} with ON DELETE CASCADE "
                                    f"({label}): its rows go with the subject's, uncounted and unverified")
                elif (schema or self._default_schema(), name) not in covered:
                    problems.append(f"{where} references {self.config.table} by foreign key {label} and no "
                                    "target ordered before this one erases it: the delete will be refused")
        return problems

    # -- scan (lethe replay, the resurrection watch: base.Scanned) --------------------------------
    def unscannable(self) -> str | None:
        return scans.match_unscannable(self.config, self.config.where, "rows")

    def scan(self, after: object | None, limit: int) -> ScanPage:
        column, reverse = scans.scanned_field(self.config, self.config.where, "rows")
        table = self.table()
        with self._errors("scan"):
            return scans.scan_sql(self.engine, table, column, reverse, after, limit)

    # -- statements -------------------------------------------------------------------------------
    def table(self) -> Any:
        """The reflected table, its where and mask columns checked."""
        if self._table is not None:
            return self._table
        from sqlalchemy import MetaData, Table
        from sqlalchemy.exc import NoSuchTableError

        schema, name = self.config.schema_and_name
        try:
            with self._errors("reflect"):
                table = Table(name, MetaData(), schema=schema, autoload_with=self.engine)
        except NoSuchTableError:
            raise PermanentError(f"sql target {self.config.name}: table {self.config.table} does not exist") from None
        wanted = [*self.config.where, *(self.config.mask or {})]
        missing = [c for c in wanted if c not in table.c]
        if missing:
            raise PermanentError(f"sql target {self.config.name}: table {self.config.table} has no column "
                                 f"{', '.join(dict.fromkeys(missing))}")
        self._table = table
        return table

    def _matches(self, subject: Subject) -> Any:
        from sqlalchemy import and_

        table = self.table()
        values: dict[str, str] = fill(self.config.where, subject)
        return and_(*(equals(table.c[c], self._convert(table.c[c], v), self.engine.dialect.name)
                      for c, v in values.items()))

    def _mask_values(self) -> dict[str, Any]:
        table = self.table()
        return {c: self._convert(table.c[c], v) for c, v in (self.config.mask or {}).items()}

    def _pending(self, subject: Subject) -> Any:
        """Rows a purge still has to act on: matched rows (delete), or matched rows not yet masked."""
        from sqlalchemy import and_, or_

        matches = self._matches(subject)
        if self.config.action == "delete":
            return matches
        table = self.table()
        return and_(matches, or_(*(table.c[c].is_distinct_from(v) for c, v in self._mask_values().items())))

    def _write(self) -> Any:
        table = self.table()
        return table.delete() if self.config.action == "delete" else table.update().values(self._mask_values())

    def _limited(self, subject: Subject) -> Any:
        """One batch's statement on SQLite or MySQL: it acts on at most batch_size of the pending rows."""
        from sqlalchemy import literal_column, select, tuple_

        table, pending, n = self.table(), self._pending(subject), self.config.batch_size
        if self.engine.dialect.name == "mysql":
            return self._write().where(pending).with_dialect_options(mysql_limit=n)
        key = [literal_column("rowid")] if self.engine.dialect.name == "sqlite" and not self._without_rowid() \
            else list(table.primary_key.columns)
        if not key:
            raise PermanentError(f"sql target {self.config.name}: table {self.config.table} has no row key "
                                 "to delete in batches (no primary key)")
        rows = select(*key).select_from(table).where(pending).limit(n).correlate(None)
        return self._write().where((key[0] if len(key) == 1 else tuple_(*key)).in_(rows))

    def _without_rowid(self) -> bool:
        from sqlalchemy import text

        schema, name = self.config.schema_and_name
        master = f"{schema}.sqlite_master" if schema else "sqlite_master"
        with self.engine.connect() as conn:
            sql = conn.execute(text(f"SELECT sql FROM {master} WHERE type = 'table' AND name = :n"),
                               {"n": name}).scalar()
        return bool(sql) and "WITHOUT ROWID" in str(sql).upper()

    def _convert(self, column: Any, value: Any) -> Any:
        """``value`` as the column's Python type, or PermanentError naming the column (never the value)."""
        return convert(column, value, f"sql target {self.config.name}: column {column.name}",
                       self.engine.dialect.name)

    # -- after the purge --------------------------------------------------------------------------
    def _finish(self) -> str:
        """Vacuum if asked, and say how far the purge went (see the module docstring)."""
        from sqlalchemy import text

        dialect = self.engine.dialect.name
        name = self.engine.dialect.identifier_preparer.format_table(self.table())
        with self._errors("vacuum"), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if dialect == "sqlite":
                if self.config.vacuum:
                    conn.execute(text("VACUUM"))
                busy = conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).first()
                return "bytes_reclaimed" if busy is None or busy[0] == 0 else "invisible"
            if not self.config.vacuum:
                return "invisible"
            if dialect == "postgresql":
                conn.execute(text("SET statement_timeout = 0"))  # a vacuum takes as long as the table needs
                conn.execute(text(f"VACUUM {'(FULL) ' if self.config.vacuum == 'full' else ''}{name}"))
                conn.execute(text("RESET statement_timeout"))
                dead = conn.execute(text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = "
                                         "CAST(:t AS regclass)"), {"t": name}).scalar()
                if dead:
                    return "invisible"  # an older snapshot still sees some dead row: VACUUM had to keep it
                return "bytes_reclaimed" if self.config.vacuum == "full" else "unindexed"
            if dialect == "mysql":  # InnoDB rebuilds the table; its undo log may keep old versions a while
                answer = conn.execute(text(f"OPTIMIZE TABLE {name}")).all()  # errors come back as rows
                return "invisible" if any(str(row[2]).lower() == "error" for row in answer) else "unindexed"
        return "invisible"

    def _default_schema(self) -> str | None:
        from sqlalchemy import inspect

        return inspect(self.engine).default_schema_name

    def _references(self, inspector: Any) -> Iterator[tuple[str | None, str, dict[str, Any]]]:
        """(schema, table, foreign key) for every foreign key that references this target's table."""
        schema, name = self.config.schema_and_name
        mine = (schema or inspector.default_schema_name, name)
        schemas = [None] if self.engine.dialect.name == "sqlite" else [
            s for s in inspector.get_schema_names() if s not in ("information_schema", "pg_catalog", "pg_toast")
            and not s.startswith("pg_")]
        for other_schema in schemas:
            for other in inspector.get_table_names(schema=other_schema):
                for fk in inspector.get_foreign_keys(other, schema=other_schema):
                    referred = (fk.get("referred_schema") or other_schema or inspector.default_schema_name,
                                fk["referred_table"])
                    if referred == mine:
                        if self.engine.dialect.name == "sqlite" and not (fk.get("options") or {}).get("ondelete"):
                            fk = {**fk, "options": {"ondelete": self._sqlite_on_delete(other, fk)}}
                        yield other_schema, other, fk

    def _sqlite_on_delete(self, table: str, fk: dict[str, Any]) -> str:
        """SQLAlchemy reads ON DELETE from a named constraint's text only; SQLite's pragma always has it."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            for row in conn.execute(text("SELECT * FROM pragma_foreign_key_list(:t)"), {"t": table}):
                if row.table == fk["referred_table"] and row._mapping["from"] in fk["constrained_columns"]:
                    return str(row.on_delete)
        return ""

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Database errors become TargetErrors naming the operation and the error's class, never its text
        (which may quote the subject's values): a foreign key's refusal is permanent and named."""
        from sqlalchemy.exc import DBAPIError, IntegrityError, NoSuchTableError, OperationalError, SQLAlchemyError

        where = f"sql target {self.config.name}: {operation} on {self.config.table}"
        try:
            yield
        except (PermanentError, RetryableError, NoSuchTableError):
            raise
        except IntegrityError as exc:
            if _is_foreign_key(exc.orig):
                raise PermanentError(f"{where} refused by {self._foreign_key(exc)}; erase the referencing rows "
                                     "first (a target ordered before this one with after)") from None
            name = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)  # e.g. a unique mask value
            raise PermanentError(f"{where} refused by constraint {name or type(exc.orig).__name__}") from None
        except (OperationalError, DBAPIError) as exc:
            retryable = isinstance(exc, OperationalError) or exc.connection_invalidated
            error = RetryableError if retryable else PermanentError
            raise error(f"{where} failed: {type(exc.orig).__name__}") from None
        except SQLAlchemyError as exc:
            raise PermanentError(f"{where} failed: {type(exc).__name__}") from None

    def _foreign_key(self, exc: Any) -> str:
        """The refusing foreign key's name, from the driver (PostgreSQL, MySQL) or, on SQLite, which never
        names it, the foreign keys that reference the table."""
        name = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)  # psycopg
        if name:
            return f"foreign key constraint {name}"
        found = re.search(r"CONSTRAINT `([^`]+)`", str(exc.orig))  # MySQL names it in the message
        if found:
            return f"foreign key constraint {found.group(1)}"
        from sqlalchemy import inspect

        try:
            labels = [fk.get("name") or f"{t}({', '.join(fk['constrained_columns'])})"
                      for _, t, fk in self._references(inspect(self.engine))]
        except Exception:  # naming the constraint must not hide the refusal itself
            labels = []
        return f"a foreign key ({', '.join(labels)})" if labels else "a constraint"


def _is_foreign_key(error: Any) -> bool:
    """A foreign-key violation, by the driver's code: PostgreSQL's SQLSTATE 23503, MySQL's 1451/1452,
    SQLite's message (its only way of saying so)."""
    code = getattr(error, "sqlstate", None) or (error.args[0] if getattr(error, "args", None) else None)
    return code in ("23503", 1451, 1452) or "FOREIGN KEY" in str(error).upper()


TID = re.compile(r"\(\d+,\d+\)")


def _tid_array(rows: Sequence[tuple[Any, ...]]) -> str:
    """The listed ctids as one PostgreSQL array literal, bound as a single text parameter: psycopg dumps a
    Python list element by element, which took a third of a purge. Each ctid is PostgreSQL's own ``(page,
    item)`` text, checked, so the literal can only ever hold tids."""
    ctids = [str(ctid) for (ctid,) in rows]
    if not all(TID.fullmatch(ctid) for ctid in ctids):
        raise PermanentError("PostgreSQL returned a ctid lethe cannot read")
    return "{" + ",".join(f'"{ctid}"' for ctid in ctids) + "}"
