"""A lake target's ``where`` as typed values, and which rows and row groups hold them.

- ``where`` values are typed first (``typed_value``): an integer column takes a canonical decimal integer in
  the column's range, a string column the text as given; anything else fails the task, never a silent zero.
  A row matches (``mask``) when every column equals its value, compared in the column's own Arrow type.
- Row groups whose statistics (min/max, null counts) cannot hold the value are never decoded
  (``holding_row_groups``); files without statistics are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from workers.targets.base import PermanentError

Value = int | str
Values = Mapping[str, Value]  # column -> typed value; a row matches when every column equals its value
Partitions = Mapping[str, str | None]  # column -> a file's partition value from its path; None: NULL

COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_where(where: Mapping[str, str]) -> None:
    """The map-load rule for a lake target's ``where`` (the selectors' one rule): plain column names, at
    least one placeholder."""
    from workers.targets.selectors import check_match

    check_match(dict(where), COLUMN, "column", "column name (letters, digits, _)", field="where")


def typed_value(text: str, arrow_type: Any, column: str) -> Value:
    """``text`` as the column stores it (an int for integer columns, else the string), or PermanentError."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type):
        from workers.targets.selectors import canonical_integer

        number = canonical_integer(text)  # "012", "+12", "1_2", " 12", "-0" spell none
        if number is None:
            raise PermanentError(f"the subject's value for integer column {column} is not a canonical decimal integer")
        bits = arrow_type.bit_width
        signed = pa.types.is_signed_integer(arrow_type)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if not low <= number <= high:
            raise PermanentError(f"the subject's value for integer column {column} is out of the column's range")
        return number
    if _is_string(arrow_type):
        return text
    raise PermanentError(f"column {column} has type {arrow_type}; only integer and string columns can be matched")


def typed_values(where: Mapping[str, str], schema: Any,
                 partitions: Partitions | None = None) -> dict[str, Value]:
    """Every ``where`` column (already filled) typed from an Arrow schema; a missing column fails, unless it
    is one of the file's ``partitions`` (hive directories), compared as the text the path holds."""
    typed: dict[str, Value] = {}
    for column, text in where.items():
        index = schema.get_field_index(column)
        if index < 0 and partitions is not None and column in partitions:
            typed[column] = text
            continue
        if index < 0:
            raise PermanentError(f"the table has no column {column}")
        typed[column] = typed_value(text, schema.field(index).type, column)
    return typed


def column_problems(where: Mapping[str, str], schema: Any, label: str,
                    partitions: Partitions | None = None) -> list[str]:
    """What ``check-map --probe`` reports about a lake table's ``where`` columns: missing, or of a type
    a subject's value cannot be compared with (integers and strings only)."""
    import pyarrow as pa

    problems = []
    for column in where:
        index = schema.get_field_index(column)
        if index < 0:
            if partitions is None or column not in partitions:
                problems.append(f"{label}: no column {column}")
            continue
        kind = schema.field(index).type
        kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (pa.types.is_integer(kind) or _is_string(kind)):
            problems.append(f"{label}: column {column} has type {kind}; only integer and string columns can be matched")
    return problems


def _is_string(arrow_type: Any) -> bool:
    import pyarrow as pa

    view = getattr(pa.types, "is_string_view", None)
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
                or (view and view(arrow_type)))


def mask(table: Any, values: Values) -> Any:
    """Boolean array: rows whose every ``values`` column equals its value, in the column's own Arrow type."""
    import pyarrow as pa
    import pyarrow.compute as pc

    result = None
    for column, value in values.items():
        if column not in table.column_names:
            raise PermanentError(f"a Parquet file has no column {column}")
        data = table.column(column)
        if pa.types.is_dictionary(data.type):
            data = data.cast(data.type.value_type)
        if _is_string(data.type) and not pa.types.is_string(data.type):
            data = data.cast(pa.string())  # string_view (delta-rs writes it) has no equality kernel
        kind = data.type
        if isinstance(value, str) and not _is_string(kind):
            raise PermanentError(f"column {column} is {kind} in a Parquet file, not a string like the selector")
        if isinstance(value, int) and not pa.types.is_integer(kind):
            raise PermanentError(f"column {column} is {kind} in a Parquet file, not an integer like the selector")
        try:
            scalar = pa.scalar(value, type=kind)
        except (pa.ArrowInvalid, OverflowError):
            return pa.array([False] * table.num_rows)  # out of this file's column range: no row can hold it
        hit = pc.fill_null(pc.equal(data, scalar), False)
        result = hit if result is None else pc.and_(result, hit)
    assert result is not None, "values is never empty"
    return result


def _may_hold(group: Any, columns: Mapping[str, int], values: Values) -> bool:
    """Whether a row group's statistics allow a row with every value (no statistics: it may)."""
    for column, value in values.items():
        index = columns.get(column)
        if index is None:
            return True  # nested or renamed: read it
        chunk = group.column(index)
        stats = chunk.statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == group.num_rows:
                return False  # every value null: cannot equal the subject's
            continue
        low, high = stats.min, stats.max
        if isinstance(value, str):
            if isinstance(low, bytes | bytearray) or isinstance(high, bytes | bytearray):
                continue  # binary statistics of a string column: compare nothing, read it
            # String statistics may be truncated prefixes, so a max is only an upper bound when it is not
            # a prefix of the value: compare on the value's own prefix as well.
            if not isinstance(low, str) or not isinstance(high, str):
                continue
            if value < low or (value > high and not value.startswith(high)):
                return False
        elif isinstance(low, int) and isinstance(high, int) and not low <= value <= high:
            return False
    return True


def holding_row_groups(pf: Any, values: Values) -> list[int]:
    """Indices of the row groups of an open ParquetFile whose statistics may hold the subject."""
    meta = pf.metadata
    columns = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    return [i for i in range(meta.num_row_groups) if _may_hold(meta.row_group(i), columns, values)]


