"""Talking to MLflow for the mlflow target: MLflow imported on first use with its telemetry off, one client per
store, URIs (scheme, local path, SQLite file), paged searches, and MLflow's errors translated into
TargetErrors that name the operation and MLflow's code, never a path or an id."""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import requests.exceptions
from sqlalchemy.exc import OperationalError

from workers.targets.base import PermanentError, RetryableError, TargetError

RETRYABLE_CODES = frozenset({
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "ABORTED", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE", "WORKSPACE_TEMPORARILY_UNAVAILABLE",
})
GONE_CODE = "RESOURCE_DOES_NOT_EXIST"
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "postgres", "mysql", "mssql"})
SERVER_SCHEMES = frozenset({"http", "https"})
PAGE = 1000
URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two characters at least: a drive letter is a path
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    OperationalError,
    ConnectionError,
    TimeoutError,
)

T = TypeVar("T")


def uri_scheme(uri: str) -> str:
    """The URI scheme without a driver suffix (``postgresql+psycopg`` -> ``postgresql``); '' for a path.
    ``mlflow-artifacts:/1/…`` (the artifact proxy's URIs, no ``//``) has a scheme too."""
    found = URI_SCHEME.match(uri)
    return found.group(1).split("+", 1)[0].lower() if found else ""



# -- MLflow, imported on first use with telemetry off ----------------------------------------------------
_load_lock = threading.Lock()
_clients: dict[tuple[str, str | None], Any] = {}


def disable_telemetry() -> None:
    """Switch MLflow's usage telemetry off for this process (the variables MLflow 3 reads), before import."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"


def load_mlflow() -> Any:
    """Import MLflow with its telemetry off; drop a telemetry client an earlier import may have started."""
    with _load_lock:
        disable_telemetry()
        with warnings.catch_warnings():
            # MLflow's SQL stores use SQLAlchemy features deprecated in 2.1; they warn once, at import.
            warnings.simplefilter("ignore", DeprecationWarning)
            import mlflow
            import mlflow.store.model_registry.sqlalchemy_store
            import mlflow.store.tracking.sqlalchemy_store
        from mlflow.telemetry.client import get_telemetry_client, set_telemetry_client

        telemetry = get_telemetry_client()
        if telemetry is not None:  # MLflow was imported before lethe switched telemetry off
            try:
                telemetry._clean_up()
            finally:
                set_telemetry_client()  # telemetry is disabled now: this sets the client to None
        return mlflow


def mlflow_client(tracking_uri: str, registry_uri: str | None) -> Any:
    """One MlflowClient per (tracking, registry) URI per process; MLflow caches its stores per URI too."""
    load_mlflow()
    from mlflow import MlflowClient

    with _load_lock:
        key = (tracking_uri, registry_uri)
        if key not in _clients:
            _clients[key] = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        return _clients[key]


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local sqlite database or artifact location, None when remote."""
    scheme = uri_scheme(uri)
    if scheme == "":
        return Path(uri)
    if scheme == "file":
        parsed = urlparse(uri)
        return Path(unquote(parsed.path))
    return None


def sqlite_path(uri: str) -> Path | None:
    if uri_scheme(uri) != "sqlite":
        return None
    path = uri.split("://", 1)[1]
    if path.startswith("/"):
        path = path[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    path = path.split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


# -- calls -------------------------------------------------------------------------------------------------
def open_client(uri: str, registry_uri: str | None) -> Any:
    """The client of a tracking store; a SQLite file that is not there is refused (MLflow would create an
    empty store, and every subject would verify 0)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise PermanentError("MLflow tracking database (sqlite) does not exist")
    with translate("connect"):
        return mlflow_client(uri, registry_uri)


def quotable(value: str) -> bool:
    """Whether a value can go in an MLflow search filter literal as is (else it is matched in Python)."""
    return not any(c in value for c in "'\"\\") and value.isprintable()


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pages(operation: str, search: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search, one page (``page_token``) at a time."""
    token: str | None = None
    while True:
        with translate(operation):
            page = search(*args, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def gone_ok(operation: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run an MLflow call; "does not exist" is success (None): deleting what is gone is done."""
    from mlflow.exceptions import MlflowException

    try:
        with translate(operation, passthrough=MlflowException):
            return call(*args, **kwargs)
    except MlflowException as exc:
        if exc.error_code == GONE_CODE:
            return None
        raise translated(operation, exc) from None


@contextmanager
def translate(operation: str, passthrough: type[BaseException] | None = None) -> Iterator[None]:
    """Vendor errors become TargetErrors whose text names the operation and MLflow's code, never a path."""
    try:
        yield
    except TargetError:
        raise
    except Exception as exc:
        if passthrough is not None and isinstance(exc, passthrough):
            raise
        raise translated(operation, exc) from None


def translated(operation: str, exc: BaseException) -> TargetError:
    code = getattr(exc, "error_code", None)
    if isinstance(code, str) and code:
        message = f"MLflow {operation}: {code}"
        return RetryableError(message) if code in RETRYABLE_CODES else PermanentError(message)
    status = getattr(getattr(exc, "response", None), "status_code", None)  # the artifact proxy's HTTPError
    if isinstance(status, int):
        message = f"MLflow {operation}: HTTP {status}"
        return RetryableError(message) if status == 429 or status >= 500 else PermanentError(message)
    message = f"MLflow {operation}: {type(exc).__name__}"
    if isinstance(exc, RETRYABLE_ERRORS):
        return RetryableError(message)
    return PermanentError(message)
