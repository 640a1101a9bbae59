"""Times given from outside (a hold's ``--until``, an API body): one parser, and every value made UTC.

The ledger stores UTC only (``models.UTCDateTime``); a value that cannot be expressed in UTC (year 9999 at
-14:00 is past ``datetime.max`` once converted, year 1 at +14:00 before ``datetime.min``) is bad input, never
a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class InvalidTime(ValueError):
    """A date or time lethe cannot use; the message says why."""


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC. A value without an offset is taken as UTC (what the CLI's help says)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # An offset east of UTC moves the instant earlier (before year 1), west of it later (past 9999).
        east = (value.utcoffset() or timedelta(0)) > timedelta(0)
        bound = "before 0001-01-01" if east else "after 9999-12-31"
        raise InvalidTime(f"the time is out of range once converted to UTC ({bound})") from None


def parse_time(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 date or date-time (``2026-12-02``, ``…T15:36:05-08:00``, ``…Z``) in UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidTime("not an ISO 8601 date or time (e.g. 2026-12-31 or 2026-12-31T18:00:00+01:00)") from None
    return to_utc(value)
