"""Values bound into a sql target's statements, converted to their column's type first: a value that
does not convert fails the task (PermanentError naming the column, never the value), never a silent zero
or a database error that would be retried."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from workers.targets.base import PermanentError

CANONICAL_INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")


def check_bindable(column: Any, label: str) -> Callable[[Any, Any, str], Any]:
    """The converter for ``column``'s type, or PermanentError when lethe binds no values to that type."""
    try:
        converter = CONVERTERS.get(column.type.python_type)
    except NotImplementedError:
        converter = None
    if converter is None:
        raise PermanentError(f"{label} has a type lethe cannot bind values to ({column.type})")
    return converter


def convert(column: Any, value: Any, label: str, dialect: str) -> Any:
    """``value`` converted to ``column``'s Python type: canonical decimal integers within the type's range,
    strings, UUIDs, decimals, floats, booleans, ISO dates. Anything else is PermanentError."""
    if value is None:
        if not column.nullable:
            raise PermanentError(f"{label} is NOT NULL: it cannot be set to null")
        return None
    converter = check_bindable(column, label)
    try:
        converted = converter(value, column, dialect)
    except (ValueError, TypeError, ArithmeticError):
        raise PermanentError(f"{label}: a value cannot be converted to {column.type}") from None
    return converted


def _to_int(value: Any, column: Any, dialect: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError("not an integer")
    if isinstance(value, str) and not CANONICAL_INTEGER.fullmatch(value):
        raise ValueError("not a canonical decimal integer")
    number = int(value)
    bits = 64 if dialect == "sqlite" else _bits_of(column.type)  # SQLite's INTEGER holds 64 bits
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise ValueError("out of the column's range")
    return number


def _bits_of(column_type: Any) -> int:
    from sqlalchemy import BigInteger, SmallInteger

    if isinstance(column_type, BigInteger):
        return 64
    return 16 if isinstance(column_type, SmallInteger) else 32


def _to_str(value: Any, column: Any, dialect: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("not a string")
    text = str(value)
    length = getattr(column.type, "length", None)
    if length is not None and len(text) > length:
        raise ValueError("longer than the column")
    return text


def _to_bool(value: Any, column: Any, dialect: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


def _to_decimal(value: Any, column: Any, dialect: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise TypeError("not a number")
    number = Decimal(str(value))
    if not number.is_finite():
        raise InvalidOperation("not finite")
    return number


def _to_float(value: Any, column: Any, dialect: str) -> float:
    return float(_to_decimal(value, column, dialect))


def _to_uuid(value: Any, column: Any, dialect: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise TypeError("not a UUID")
    return uuid.UUID(value)


def _to_date(value: Any, column: Any, dialect: str) -> date:
    if not isinstance(value, str):
        raise TypeError("not an ISO date")
    return date.fromisoformat(value)


def _to_datetime(value: Any, column: Any, dialect: str) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not an ISO datetime")
    return datetime.fromisoformat(value)


CONVERTERS: Mapping[type, Callable[[Any, Any, str], Any]] = {
    int: _to_int, str: _to_str, bool: _to_bool, Decimal: _to_decimal, float: _to_float, uuid.UUID: _to_uuid,
    date: _to_date, datetime: _to_datetime,
}
