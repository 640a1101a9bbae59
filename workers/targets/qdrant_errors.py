"""Qdrant's errors translated at the edge: connection refused, timeouts, 429 and 5xx are RetryableError; a
missing collection and other 4xx are PermanentError. Messages name the operation, the collection and a
status code or exception type, never the vendor's text (it may hold an identifier, a payload value or the
local path)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from workers.targets.base import PermanentError, RetryableError, TargetError

# Vendor exception types that mean "try again later" (QdrantTarget.retryable_errors).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, ConnectionError, TimeoutError)


@contextmanager
def translate(operation: str, collection: str) -> Iterator[None]:
    """Vendor errors raised inside become TargetErrors; TargetErrors pass through."""
    try:
        yield
    except TargetError:
        raise
    except Exception as exc:
        raise translated(exc, operation, collection) from None


def is_not_found(exc: BaseException) -> bool:
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    # local mode: ValueError("Collection <name> not found")
    return isinstance(exc, ValueError) and str(exc).startswith("Collection ") and str(exc).endswith(" not found")


def translated(exc: BaseException, operation: str, collection: str) -> TargetError:
    """A vendor error as a TargetError naming the operation and a status or type, never the error's text."""
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if is_not_found(exc):
        return PermanentError(f"Qdrant collection {collection} does not exist")
    where = f"Qdrant {operation} on collection {collection}"
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            return RetryableError(f"{where}: HTTP {status}")
        return PermanentError(f"{where}: HTTP {status}")
    if isinstance(exc, ResourceExhaustedResponse):
        return RetryableError(f"{where}: HTTP 429")
    if isinstance(exc, ResponseHandlingException):
        source = exc.source
        if isinstance(source, httpx.TransportError | ConnectionError | TimeoutError):
            return RetryableError(f"{where}: {type(source).__name__}")
        return PermanentError(f"{where}: unexpected response ({type(source).__name__})")
    if isinstance(exc, (*RETRYABLE_ERRORS, sqlite3.OperationalError)):
        return RetryableError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, RuntimeError) and "already accessed by another instance" in str(exc):
        return RetryableError(f"{where}: the local storage folder is in use by another process")
    return PermanentError(f"{where}: {type(exc).__name__}")
