"""The read-only SQL a data map may hold (``keys_query``, ``ids_query``, ``identities``), checked when the
map loads with a real SQL parser (sqlglot), so a statement that could write, call a server function or
select every subject's rows is refused before it ever reaches a database.

What passes, and only that:

- one statement: a plain ``SELECT`` (read-only ``WITH`` parts and ``UNION`` branches allowed, each branch
  checked like the statement itself);
- over tables named in ``FROM``/``JOIN`` (no table functions, no system catalogs), every join with an
  ``ON`` that equates columns (no cross joins, which would pair the subject's rows with everybody's);
- built from a small allow-list of node types: columns, literals, comparisons, ``AND``/``OR``/``NOT``,
  ``IN``/``BETWEEN``/``LIKE``/``IS``, ``||`` and ``+ - *``, ``DISTINCT``/``ORDER BY``/``LIMIT``/``GROUP BY``
  and the functions in ``FUNCTIONS``. Anything else (``INTO``, ``FOR UPDATE``, ``pg_read_file``, a
  recursive CTE, a write) is named in the error;
- parameters are SQLAlchemy's bound ``:kind`` only, and the ``WHERE`` of every branch is *pinned*: it
  holds ``column = :kind`` as a conjunct, or every side of a top-level ``OR`` is pinned. So ``… OR true``
  or ``… OR 1=1`` is refused: every row returned matches a bound identifier. The column side may be
  wrapped in lower/upper/trim only (a CAST is lossy: ``CAST(email AS INTEGER)`` is 0 for every email on
  SQLite); the parameter side may be cast too;
- a pinned column resolves to a column of a base table: through a CTE or a derived table only when that
  projects it as a plain column (or ``*``), never to a select-list alias or a parameter
  (``SELECT id, :email AS email FROM users`` wrapped in a subquery, or ``WHERE e = :email`` with
  ``:email AS e``, would compare the parameter with itself);
- a parameter appears only as the right-hand side of a pin (never in a select list, a function argument
  or an ``IN``), and every join's ``ON`` equates columns of two different tables (``o.id = o.id`` pairs
  every row);
- no comment at all: MariaDB and MySQL *run* ``/*! … */`` and ``/*M! … */`` comments as SQL, which sqlglot
  reads as comments, so a checked statement could hide ``OR 1=1`` in one.

This is the first of three layers; docs/sql-safety.md describes the other two (a read-only session with
a statement timeout, and a role granted SELECT on the needed tables only).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import sqlglot
from sqlalchemy import text
from sqlglot import exp
from sqlglot.errors import SqlglotError

FUNCTIONS: dict[type[exp.Expression], str] = {
    exp.Lower: "lower", exp.Upper: "upper", exp.Trim: "trim", exp.Cast: "cast", exp.Coalesce: "coalesce",
    exp.Concat: "concat",
}
# Node types a checked statement may contain besides FUNCTIONS; a whitelist, so anything new in sqlglot
# (or any construct not thought of here) is refused rather than let through.
ALLOWED: frozenset[type[exp.Expression]] = frozenset({
    exp.Select, exp.Union, exp.From, exp.Join, exp.Where, exp.Table, exp.TableAlias, exp.Alias, exp.Identifier,
    exp.Column, exp.Star, exp.Dot, exp.Distinct, exp.Order, exp.Ordered, exp.Limit, exp.Offset, exp.Group,
    exp.Having, exp.Subquery, exp.With, exp.CTE, exp.Paren, exp.Tuple, exp.And, exp.Or, exp.Not, exp.EQ,
    exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Null,
    exp.Boolean, exp.Literal, exp.Placeholder, exp.Neg, exp.DataType, exp.DataTypeParam, exp.DPipe, exp.Add,
    exp.Sub, exp.Mul, *FUNCTIONS,
})
WRITES: tuple[type[exp.Expression], ...] = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Drop, exp.Create, exp.Alter, exp.TruncateTable,
    exp.Command, exp.Grant, exp.Copy,
)
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "mysql", "performance_schema", "sys"})
SYSTEM_TABLE_PREFIXES = ("pg_", "sqlite_")
# sides of a pinning equality: a column, wrapped in lossless case/space functions only, against a bound
# parameter, which may also be cast to the column's type
COLUMN_SIDE = frozenset({exp.Column, exp.Identifier, exp.Paren, exp.Lower, exp.Upper, exp.Trim})
PARAMETER_SIDE = frozenset({exp.Placeholder, exp.Paren, exp.Lower, exp.Upper, exp.Trim, exp.Cast, exp.DataType,
                            exp.DataTypeParam})


class UnsafeQuery(ValueError):
    """A statement the checker refuses; the message names the problem (never the statement's values)."""


def dialect_of(url: str | None) -> str | None:
    """sqlglot's dialect for a SQLAlchemy URL (``postgresql+psycopg://…`` -> ``postgres``)."""
    scheme = (url or "").split(":", 1)[0].split("+", 1)[0].lower()
    return {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql",
            "sqlite": "sqlite"}.get(scheme)


def check_read_query(sql: str, dialect: str | None = None, what: str = "the query") -> frozenset[str]:
    """Refuse (UnsafeQuery) unless ``sql`` is a read-only SELECT pinned to bound identifiers (see the module
    docstring); return the names of its ``:kind`` parameters. The one check every SQL of a data map passes."""
    if "{" in sql:
        raise UnsafeQuery(f"{what} takes :kind bound parameters, never {{placeholders}}")
    try:
        if any(token.comments for token in sqlglot.tokenize(sql, read=dialect)):
            raise UnsafeQuery(f"{what} holds a comment, which a checked query may not (MariaDB and MySQL run "
                              "/*! … */ comments as SQL)")
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        raise UnsafeQuery(f"{what} is not valid SQL: {str(exc).splitlines()[0][:120]}") from None
    except RecursionError:
        raise UnsafeQuery(f"{what} is nested too deeply") from None
    if len(statements) != 1:
        raise UnsafeQuery(f"{what} must be a single statement (found {len(statements)})")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.Union):
        raise UnsafeQuery(f"{what} must be a SELECT (found {_name(tree)})")
    writes = [node for node in tree.walk() if isinstance(node, WRITES)]
    if writes:
        raise UnsafeQuery(f"{what} must only read (found {_name(writes[0])})")
    for node in tree.walk():
        _check_node(node, what)
    params = _parameters(tree, what)
    if set(text(sql).compile().params) != params:  # the text SQLAlchemy binds must be the text checked
        raise UnsafeQuery(f"{what}: its :kind parameters are ambiguous (write them as plain :name)")
    if not params:
        raise UnsafeQuery(f"{what} needs a :kind parameter, or it would select the same rows for every subject")
    ctes = {cte.alias_or_name: cte.this for cte in tree.find_all(exp.CTE)}
    for branch in _branches(tree, what):
        where = branch.args.get("where")
        if where is None or not _pinned(where.this, partial(_resolves, select=branch, ctes=ctes, depth=0)):
            raise UnsafeQuery(
                f"{what} must compare a column of a table with a :kind parameter in its WHERE, joined with AND "
                "(an OR is allowed only when every side does), or it could select every subject's rows"
            )
    for placeholder in tree.find_all(exp.Placeholder):
        if not _in_pin(placeholder):
            raise UnsafeQuery(f"{what} may use a :kind parameter only as column = :kind in a WHERE")
    return frozenset(params)


def _name(node: Any) -> str:  # Any: sqlglot's walk() yields its Expr base class
    return node.key.upper() if node.key else type(node).__name__.upper()


def _check_node(node: Any, what: str) -> None:
    if isinstance(node, exp.Func) and type(node) not in ALLOWED:  # AND/OR are Funcs to sqlglot too
        name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
        allowed = ", ".join(sorted(FUNCTIONS.values()))
        raise UnsafeQuery(f"{what} calls {name.lower()}(), which is not allowed (allowed: {allowed})")
    if type(node) not in ALLOWED:
        raise UnsafeQuery(f"{what} uses {_name(node)}, which a read-only lookup may not")
    if isinstance(node, exp.With) and node.args.get("recursive"):
        raise UnsafeQuery(f"{what} uses WITH RECURSIVE, which a read-only lookup may not")
    if isinstance(node, exp.Table):
        if not isinstance(node.this, exp.Identifier):
            raise UnsafeQuery(f"{what} reads from a table function, not a table")
        schema, name = node.db.lower(), node.name.lower()
        if schema in SYSTEM_SCHEMAS or name.startswith(SYSTEM_TABLE_PREFIXES):
            raise UnsafeQuery(f"{what} reads a system catalog ({node.sql()}), not an application table")
    if isinstance(node, exp.Join) and not (node.args.get("on") is not None and _joins_columns(node.args["on"])):
        raise UnsafeQuery(f"{what} joins without ON column = column of two tables (a cross join, or an ON "
                          "comparing a column with itself, pairs every row)")


def _parameters(tree: exp.Expression, what: str) -> set[str]:
    names: set[str] = set()
    for node in tree.find_all(exp.Placeholder):
        if not isinstance(node.this, str) or not node.this:
            raise UnsafeQuery(f"{what} takes :kind bound parameters only (not ?, %s or %(name)s)")
        names.add(node.this)
    return names


def _branches(tree: exp.Expression, what: str) -> list[exp.Select]:
    if isinstance(tree, exp.Union):
        return _branches(tree.this, what) + _branches(tree.expression, what)
    if isinstance(tree, exp.Subquery):
        return _branches(tree.this, what)
    if not isinstance(tree, exp.Select) or tree.args.get("from_", tree.args.get("from")) is None:
        raise UnsafeQuery(f"{what} must select FROM a table in every branch")
    return [tree]


def _pinned(node: exp.Expression, resolves: Callable[[exp.Column], bool]) -> bool:
    """True when every row ``node`` accepts equals a bound parameter on some base-table column."""
    if isinstance(node, exp.Paren):
        return _pinned(node.this, resolves)
    if isinstance(node, exp.And):
        return _pinned(node.this, resolves) or _pinned(node.expression, resolves)
    if isinstance(node, exp.Or):
        return _pinned(node.this, resolves) and _pinned(node.expression, resolves)
    if isinstance(node, exp.EQ):
        sides = (node.this, node.expression)
        return any(_is_side(a, COLUMN_SIDE, exp.Column) and _is_side(b, PARAMETER_SIDE, exp.Placeholder)
                   and all(resolves(c) for c in a.find_all(exp.Column)) for a, b in (sides, sides[::-1]))
    return False


def _is_side(node: exp.Expression, allowed: frozenset[type[exp.Expression]], must: type[exp.Expression]) -> bool:
    nodes = list(node.walk())
    return all(type(n) in allowed for n in nodes) and sum(isinstance(n, must) for n in nodes) == 1


def _in_pin(placeholder: exp.Expression) -> bool:
    """True when ``placeholder`` is the parameter side of ``column = :kind`` under a WHERE's AND/OR."""
    side: exp.Expression = placeholder
    while type(side.parent) in PARAMETER_SIDE:
        side = side.parent  # type: ignore[assignment]
    eq = side.parent
    if not isinstance(eq, exp.EQ):
        return False
    other = eq.expression if eq.this is side else eq.this
    if not _is_side(other, COLUMN_SIDE, exp.Column):
        return False
    node = eq.parent
    while isinstance(node, exp.And | exp.Or | exp.Paren):
        node = node.parent
    return isinstance(node, exp.Where)


def _sources(select: exp.Expression) -> dict[str, exp.Expression]:
    """The select's FROM and JOIN sources by the name its columns qualify them with."""
    from_ = select.args.get("from_", select.args.get("from"))
    items = [from_.this] if from_ is not None else []
    items += [join.this for join in select.args.get("joins") or []]
    return {item.alias_or_name: item for item in items}


def _resolves(column: exp.Column, select: exp.Expression, ctes: dict[str, exp.Expression], depth: int) -> bool:
    """True when ``column`` in ``select`` names a column of a base table, not a select-list alias, a
    parameter or a derived value: followed through CTEs and derived tables that project it plainly."""
    if depth > 8 or not isinstance(select, exp.Select):
        return False
    name, sources = column.name, _sources(select)
    if any(isinstance(p, exp.Alias) and p.alias == name and not (isinstance(p.this, exp.Column) and p.this.name == name)
           for p in select.expressions):
        return False  # SQLite lets WHERE name a select-list alias: ``:email AS e ... WHERE e = :email``
    only = next(iter(sources.values())) if len(sources) == 1 else None  # unqualified: the one source
    source = sources.get(column.table) if column.table else only
    if isinstance(source, exp.Table):
        inner = ctes.get(source.name) if not source.db else None
        return inner is None or _projects(inner, name, ctes, depth)
    return isinstance(source, exp.Subquery) and _projects(source.this, name, ctes, depth)


def _projects(select: exp.Expression, name: str, ctes: dict[str, exp.Expression], depth: int) -> bool:
    """True when the derived ``select`` outputs ``name`` as a plain base-table column (or through ``*``)."""
    if not isinstance(select, exp.Select):
        return False
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            return _resolves(exp.column(name), select, ctes, depth + 1)
        if projection.alias_or_name == name:
            inner = projection.this if isinstance(projection, exp.Alias) else projection
            return isinstance(inner, exp.Column) and _resolves(inner, select, ctes, depth + 1)
    return False


def _joins_columns(node: exp.Expression) -> bool:
    if isinstance(node, exp.Paren):
        return _joins_columns(node.this)
    if isinstance(node, exp.And):
        return _joins_columns(node.this) or _joins_columns(node.expression)
    return (isinstance(node, exp.EQ) and isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Column)
            and bool(node.this.table) and bool(node.expression.table) and node.this.table != node.expression.table)
