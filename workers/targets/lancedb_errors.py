"""LanceDB's errors translated at the edge: a TargetError naming the operation, the table and a short code,
never the vendor's text (it holds predicates, identifiers included, and paths)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from workers.targets.base import PermanentError, RetryableError

# Words in LanceDB's error text (which also holds predicates and paths, so it is never kept) that say
# what happened. Lance reports IO failures as OSError or RuntimeError, invalid input as ValueError.
_NOT_FOUND = re.compile(r"not found|no such file", re.IGNORECASE)
_CONFLICT = re.compile(r"conflict|retryable|concurrent", re.IGNORECASE)
_TRANSIENT = re.compile(r"\bio\b|i/o|timeout|timed out|temporar|unavailable|interrupted|too many", re.IGNORECASE)


@contextmanager
def translate(operation: str, table: str) -> Iterator[None]:
    """Vendor errors become TargetErrors naming the operation and a short code, never a value or path."""
    try:
        yield
    except (PermanentError, RetryableError):
        raise
    except Exception as exc:
        retryable, code = _classify(exc)
        error = RetryableError if retryable else PermanentError
        raise error(f"LanceDB {operation} on table {table}: {code}") from None


def _classify(exc: Exception) -> tuple[bool, str]:
    """(retryable, short code) for a vendor exception."""
    message = str(exc)
    if isinstance(exc, PermissionError):
        return False, "permission denied"
    if isinstance(exc, FileNotFoundError) or _NOT_FOUND.search(message):
        return False, "not found"
    if _CONFLICT.search(message):
        return True, "commit conflict"
    if isinstance(exc, TimeoutError | ConnectionError):
        return True, type(exc).__name__
    if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _TRANSIENT.search(message)):
        return True, f"{type(exc).__name__} (IO)"
    if isinstance(exc, ValueError):
        return False, "invalid input"
    return False, type(exc).__name__
