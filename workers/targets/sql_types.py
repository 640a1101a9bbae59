"""Values bound into a sql target's statements, converted to their column's type first: a value that
does not convert fails the task (PermanentError naming the column, never the value), never a silent zero
or a database error that would be retried.

Only a value's canonical spelling converts (the text the converted value prints as: ``str(UUID(v))``,
plain decimals without exponent or trailing zeros, ``YYYY-MM-DD``, no ``-0``): a hold or a request
recorded by the keyed hash of one spelling would otherwise be bypassed by another spelling of the same
value (an uppercase or dashless UUID, ``1.50`` for ``1.5``), which the database compares as equal."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from workers.targets.base import PermanentError
from workers.targets.selectors import canonical_integer


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
    number = canonical_integer(value) if isinstance(value, str) else value
    if number is None:
        raise ValueError("not a canonical decimal integer")
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


def canonical_decimal(number: Decimal | float) -> str:
    """The one spelling of a number: plain decimal notation, no exponent, no leading ``+`` or zeros, no
    trailing fractional zeros, ``0`` for either zero (``1.50`` -> ``1.5``, ``1E+2`` -> ``100``)."""
    number = Decimal(repr(number)) if isinstance(number, float) else number
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _canonical(value: Any, converted: Any, rendered: str) -> Any:
    """``converted``, when ``value`` is text spelling it canonically (``rendered``); else ValueError."""
    if isinstance(value, str) and value != rendered:
        raise ValueError("not the value's canonical spelling")
    return converted


def _to_decimal(value: Any, column: Any, dialect: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise TypeError("not a number")
    number = Decimal(repr(value) if isinstance(value, float) else str(value))
    if not number.is_finite():
        raise InvalidOperation("not finite")
    return _canonical(value, number, canonical_decimal(number))


def _to_float(value: Any, column: Any, dialect: str) -> float:
    number = float(_to_decimal(value, column, dialect))
    # a text that names no float exactly ("0.10000000000000001") rounds to a value another text spells
    return _canonical(value, number, canonical_decimal(number))


def _to_uuid(value: Any, column: Any, dialect: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise TypeError("not a UUID")
    converted = uuid.UUID(value)
    return _canonical(value, converted, str(converted))


def _to_date(value: Any, column: Any, dialect: str) -> date:
    if not isinstance(value, str):
        raise TypeError("not an ISO date")
    converted = date.fromisoformat(value)
    return _canonical(value, converted, converted.isoformat())


def _to_datetime(value: Any, column: Any, dialect: str) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not an ISO datetime")
    converted = datetime.fromisoformat(value)
    return _canonical(value, converted, converted.isoformat())


CONVERTERS: Mapping[type, Callable[[Any, Any, str], Any]] = {
    int: _to_int, str: _to_str, bool: _to_bool, Decimal: _to_decimal, float: _to_float, uuid.UUID: _to_uuid,
    date: _to_date, datetime: _to_datetime,
}


def equals(column: Any, value: Any, dialect: str) -> Any:
    """``column = value`` as the one comparison every statement of a sql target selects rows by (count,
    purge, verify). A string column compares under its own collation, which may be wider than the subject:
    MySQL/MariaDB's utf8mb4_general_ci makes ``José`` and ``JOSE `` equal ``jose`` (accents, case, PAD
    SPACE), a PostgreSQL nondeterministic collation or a SQLite ``COLLATE NOCASE`` column likewise. So the
    column's own comparison (which its index serves) is ANDed with a binary one: byte-wise collation (the
    charset's ``_bin`` on MySQL, ``"C"`` on PostgreSQL, ``BINARY`` on SQLite) and, against PAD SPACE, equal
    lengths on MySQL."""
    from sqlalchemy import String, and_, func, literal

    if not isinstance(column.type, String) or not isinstance(value, str):
        return column == value
    if dialect == "mysql":
        charset = getattr(column.type, "charset", None) or column.table.kwargs.get("mysql_default charset", "utf8mb4")
        exact = and_(column.collate(f"{charset}_bin") == value,
                     func.char_length(column) == func.char_length(literal(value)))
    else:
        exact = column.collate("C" if dialect == "postgresql" else "BINARY") == value
    return and_(column == value, exact)
