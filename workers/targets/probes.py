"""What ``lethe check-map --probe`` asks of the stores no adapter method covers: the read-only lookups of a
map (a target's ``keys_query``/``ids_query``, every ``identities:`` resolution) and the MLflow tracking
store, and the walk over a map that ``check-map --probe`` prints. Adapters that can check their own store
implement ``base.Probed``; ``probe_target`` adds the lookups to what they find.

A lookup is probed by running it, never by reading what it returns: the statement is wrapped as
``SELECT * FROM (<sql>) AS lethe_probe WHERE 1 = 0`` with every parameter bound to NULL, on the same
read-only engine (and statement timeout) a task uses. So the database parses and plans it against its real
tables and columns and with the role the URL names, and no row of any subject can come back. The SQL was
already checked when the map loaded (``sql_check``); the probe finds what only the database knows: that it
cannot be reached, that a table or column is missing, that the role may not read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.targets.base import Probed, TargetConfig, TargetError, build_target
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


def probe_map(targets: Sequence[TargetConfig]) -> list[tuple[str, str]]:
    """(target, problem) for every target of a map, each probed with the targets that complete before it
    (its ``after``, transitively): what ``lethe check-map --probe`` prints."""
    by_name = {t.name: t for t in targets}
    found: list[tuple[str, str]] = []
    for config in targets:
        earlier: dict[str, TargetConfig] = {}
        waiting = list(config.after)
        while waiting:
            name = waiting.pop()
            if name in by_name and name not in earlier:
                earlier[name] = by_name[name]
                waiting.extend(by_name[name].after)
        found += [(config.name, problem) for problem in probe_target(config, list(earlier.values()))]
    return found


def probe_target(config: TargetConfig, earlier: Sequence[TargetConfig]) -> list[str]:
    """The problems ``check-map --probe`` reports for one target: its store (``Probed``) and its read-only
    lookups (``keys_query``, ``ids_query``)."""
    try:
        target = build_target(config)
        found = target.probe(earlier) if isinstance(target, Probed) else []
    except TargetError as exc:
        found = [str(exc)]
    except Exception as exc:  # an engine's own error text may hold data: keep its type only
        found = [f"cannot probe the store: {type(exc).__name__}"]
    return found + probe_queries(config)
