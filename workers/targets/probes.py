"""What ``lethe check-map --probe`` asks of the stores no adapter method covers: the read-only lookups of a
map (a target's ``keys_query``/``ids_query``, every ``identities:`` resolution) and the MLflow tracking
store. Adapters that can check their own store implement ``base.Probed``; ``base.probe_target`` adds these.

A lookup is probed by running it, never by reading what it returns: the statement is wrapped as
``SELECT * FROM (<sql>) AS lethe_probe WHERE 1 = 0`` with every parameter bound to NULL, on the same
read-only engine (and statement timeout) a task uses. So the database parses and plans it against its real
tables and columns and with the role the URL names, and no row of any subject can come back. The SQL was
already checked when the map loaded (``sql_check``); the probe finds what only the database knows: that it
cannot be reached, that a table or column is missing, that the role may not read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.targets.base import TargetConfig, TargetError
from workers.targets.selectors import KeysQuery, engine, unreachable

MAX_MESSAGE = 160  # the database's first line, enough for "no such table: users"


def probe_query(query: KeysQuery, what: str) -> list[str]:
    """The problem with one read-only lookup, as one line, or none. The database's own message is shown
    (its first line): the probe binds no subject's value, so it can name only the map's tables and columns."""
    from sqlalchemy import text

    probe = text(f"SELECT * FROM ({query.sql}) AS lethe_probe WHERE 1 = 0")  # sql_check passed it
    if _missing_sqlite_file(query.url):  # connecting would create an empty database in its place
        return [f"{what}: its SQLite database file does not exist"]
    try:
        with engine(query.url, read_only=True, timeout_seconds=query.timeout_seconds).connect() as conn:
            conn.execute(probe, dict.fromkeys(query.parameters())).close()
    except Exception as exc:
        origin = getattr(exc, "orig", None) or exc
        first = (str(origin).strip().splitlines() or [""])[0][:MAX_MESSAGE]
        detail = f"{type(origin).__name__}: {first}" if first else type(origin).__name__
        if unreachable(exc) and not _refused_statement(origin):
            return [f"{what}: cannot reach its database ({detail})"]
        return [f"{what}: its database refused the statement ({detail})"]
    return []


def _missing_sqlite_file(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or name in ("", ":memory:") or name.startswith("file:"):
        return False
    return not Path(name).exists()


def _refused_statement(origin: BaseException) -> bool:
    """SQLite reports a missing table as an OperationalError, as it reports an unreadable file: tell them
    apart by what the statement could be blamed for."""
    text = str(origin).lower()
    return any(s in text for s in ("no such table", "no such column", "syntax error", "ambiguous column"))


def probe_queries(config: TargetConfig) -> list[str]:
    """The problems of a target's lookups (``keys_query``, ``ids_query``)."""
    problems: list[str] = []
    for field in config.query_fields:
        query = getattr(config, field)
        if query is not None:
            problems += probe_query(query, field)
    return problems


def probe_mlflow(config: Any) -> list[str]:
    """The MLflow tracking store answers (one experiment searched, the registry's model looked up when the
    map names one). The client's own retries apply: an unreachable server takes its retry budget to report."""
    from workers.targets.mlflow_api import open_client, translate

    try:
        client = open_client(config.tracking_uri, config.registry_uri)
        with translate("search experiments"):
            client.search_experiments(max_results=1)
        if config.registered_model:
            with translate("get registered model"):
                client.get_registered_model(config.registered_model)
    except TargetError as exc:
        return [str(exc)]
    return []
