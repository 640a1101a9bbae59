"""A LanceDB subject selector as SQL predicates built here, never formatted from raw input (the lancedb
module's "Selectors"): quoted plain column names, each value converted to its column's Arrow type first.
The ``Selector`` also says what the byte scan looks for and which rows read back are the subject's."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.base import PermanentError
from workers.targets.lancedb_config import COLUMN, LanceDBConfig
from workers.targets.selectors import canonical_integer

IDS_BATCH = 500  # ids per IN (...) predicate
MIN_RAW_SCAN = 6  # shortest identifier the raw byte scan looks for (see the module docstring)


def quote_column(column: str) -> str:
    """A column name as a quoted SQL identifier; only plain names are accepted."""
    if not isinstance(column, str) or not COLUMN.fullmatch(column):
        raise PermanentError("LanceDB selector: a column name is not a plain identifier")
    return f"`{column}`"


def sql_literal(value: object, arrow_type: Any, column: str) -> str:
    """``value`` converted to ``arrow_type`` and written as a SQL literal, or PermanentError.

    Integers must be canonical decimal text (or ints) within the type's range: never a silent zero.
    Strings are quoted with embedded single quotes doubled. Other column types are refused.
    """
    import pyarrow.types as pat

    if pat.is_integer(arrow_type):
        if isinstance(value, bool):
            raise PermanentError(f"LanceDB selector: a value for integer column {column} is not an integer")
        if isinstance(value, int):
            number: int | None = value
        else:
            number = canonical_integer(value) if isinstance(value, str) else None
        if number is None:
            raise PermanentError(
                f"LanceDB selector: a value for integer column {column} is not a canonical decimal integer"
            )
        bits = arrow_type.bit_width
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if pat.is_signed_integer(arrow_type) else (0, 2**bits - 1)
        if not low <= number <= high:
            raise PermanentError(f"LanceDB selector: a value for integer column {column} is out of range")
        if number == -(2**63):  # the parser reads 9223372036854775808 before negating it, which overflows
            return "(-9223372036854775807 - 1)"
        return str(number)
    if pat.is_string(arrow_type) or pat.is_large_string(arrow_type) or _is_string_view(arrow_type):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise PermanentError(f"LanceDB selector: a value for string column {column} is not a string")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise PermanentError(f"LanceDB selector: a value for column {column} contains control characters")
        return "'" + value.replace("'", "''") + "'"
    raise PermanentError(
        f"LanceDB selector: column {column} has type {arrow_type}; only integer and string columns can be matched"
    )


def _is_string_view(arrow_type: Any) -> bool:
    import pyarrow.types as pat

    check = getattr(pat, "is_string_view", None)
    return bool(check and check(arrow_type))


def column_type(schema: Any, column: str, table: str) -> Any:
    index = schema.get_field_index(column)
    if index < 0:
        raise PermanentError(f"LanceDB table {table} has no column {column}")
    return schema.field(index).type


def equality_predicate(values: Mapping[str, object], schema: Any, table: str = "?") -> str:
    """``(`col` = literal) AND ...`` for every column of ``values``, typed from ``schema``."""
    if not values:
        raise PermanentError("LanceDB selector: no column to match")
    clauses = []
    for column, value in values.items():
        quoted = quote_column(column)
        clauses.append(f"({quoted} = {sql_literal(value, column_type(schema, column, table), column)})")
    return " AND ".join(clauses)


def in_predicate(column: str, values: Sequence[object], schema: Any, table: str = "?") -> str:
    """```col` IN (literal, ...)`` typed from ``schema``."""
    if not values:
        raise PermanentError("LanceDB selector: no value to match")
    quoted = quote_column(column)
    arrow_type = column_type(schema, column, table)
    return f"{quoted} IN ({', '.join(sql_literal(v, arrow_type, column) for v in values)})"


@dataclass
class Selector:
    """The predicates that select one subject's rows, and what the byte scan looks for."""

    predicates: list[str]
    literals: list[bytes]  # quoted literals as written into the predicates
    raw: list[bytes]  # identifier values the raw scan looks for
    match: dict[str, object] = field(default_factory=dict)  # column -> converted value (match selectors)
    id_column: str | None = None
    ids: frozenset[object] = frozenset()

    def owns(self, row: Mapping[str, Any]) -> bool:
        """Whether a row read back (e.g. a search result) is one of the subject's."""
        if self.id_column is not None:
            return row.get(self.id_column) in self.ids
        return all(row.get(column) == value for column, value in self.match.items())

    @property
    def columns(self) -> list[str]:
        return [self.id_column] if self.id_column is not None else list(self.match)



def subject_selector(config: LanceDBConfig, subject: Subject, schema: Any) -> Selector:
    """The predicates selecting ``subject``'s rows of the table whose Arrow ``schema`` is given."""
    if config.match is not None:
        filled: dict[str, str] = fill(config.match, subject)
        predicate = equality_predicate(filled, schema, config.table)
        converted: dict[str, object] = {}
        literals: list[bytes] = []
        raw: list[bytes] = []
        for column, value in filled.items():
            arrow_type = column_type(schema, column, config.table)
            literal = sql_literal(value, arrow_type, column)
            if literal.startswith("'"):
                converted[column] = value
                literals.append(literal.encode())
                if len(value.encode()) >= MIN_RAW_SCAN:
                    raw.append(value.encode())
            else:
                converted[column] = int(value)
        return Selector([predicate], literals, raw, match=converted)
    ids = query_ids(config, subject, schema)
    column = config.id_column
    batches = [ids[i:i + IDS_BATCH] for i in range(0, len(ids), IDS_BATCH)]
    # The scan looks for the predicates (which hold the ids); item ids alone are other rows' business.
    return Selector([in_predicate(column, batch, schema, config.table) for batch in batches], [], [],
                    id_column=column, ids=frozenset(ids))


def query_ids(config: LanceDBConfig, subject: Subject, schema: Any) -> list[object]:
    """The ids_query's ids, converted to the id column's type, in order and without duplicates."""
    import pyarrow.types as pat

    assert config.ids_query is not None
    column = config.id_column
    integer = pat.is_integer(column_type(schema, column, config.table))
    ids: dict[object, None] = {}  # ordered, without duplicates
    for value in config.ids_query.values(subject, IDS_BATCH, "ids_query"):
        if value is None or isinstance(value, bool) or not isinstance(value, int | str):
            raise PermanentError("ids_query returned a value that is not an id")
        if integer:
            number = value if isinstance(value, int) else canonical_integer(value)
            if number is None:
                raise PermanentError(f"ids_query returned an id that is not an integer for column {column}")
            value = number
        else:
            value = str(value)
        ids[value] = None
    return list(ids)
