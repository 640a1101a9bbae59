"""Copies of a target's data (SPEC "Copies: replicas, backups, restores").

``replicas:`` are copies lethe can reach: each entry overrides some of its primary's fields and becomes a
target of its own (one task, one completion record, one certificate row), named ``<primary>.replica-<n>``
unless it gives ``name:``. ``backups:`` are copies lethe cannot reach; they age out after ``retention_days``.

This module is the one place that knows how a raw map entry expands into its replicas (the data map
validates what it yields; the ledger reads the same expansion from a stored map's text, as it parses no
map) and how ``gone_by`` is dated: the time by which no copy holds an erased subject.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

NOT_INHERITED = ("replicas", "backups", "name")  # a replica is its own target; backups are its primary's
NOT_OVERRIDDEN = ("kind", "replicas", "replica_of")  # a mirror is the same kind of store, one level deep


@dataclass(frozen=True)
class Copy:
    """What dating a target's ``gone_by`` needs: the primary it mirrors, and how long its backups keep data."""

    replica_of: str | None = None
    retention_days: int | None = None


NO_COPY = Copy()


def replica_entries(item: Mapping[str, Any], errors: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label for errors, raw entry) of each replica the raw target ``item`` declares: the primary's fields
    but ``replicas``, ``backups`` and ``name``, then the replica's overrides, its name and ``replica_of``.
    Problems of the ``replicas:`` list itself are appended to ``errors``; each entry is validated by the
    caller like any target."""
    raw, primary = item.get("replicas"), item.get("name")
    if raw is None or not isinstance(primary, str):
        return []  # no replicas, or a primary without a name: its own error says so
    if not isinstance(raw, list):
        errors.append(f"target {primary!r}: replicas must be a list of the fields each replica overrides, "
                      "e.g. [{bucket: photos-replica}]")
        return []
    base = {k: v for k, v in item.items() if k not in NOT_INHERITED}
    entries = []
    for n, override in enumerate(raw, 1):
        where = f"target {primary!r}: replicas[{n - 1}]"
        if not isinstance(override, dict) or not override:
            errors.append(f"{where} must be a non-empty mapping of the fields it overrides")
            continue
        fixed = sorted(set(override) & set(NOT_OVERRIDDEN))
        if fixed:
            errors.append(f"{where}: {', '.join(fixed)} cannot be set on a replica (it is the same kind of "
                          "store as its primary, and lethe records which primary it mirrors)")
            continue
        name = override.get("name", f"{primary}.replica-{n}")
        entries.append((f"target {name!r} (replica of {primary!r})",
                        {**base, **override, "name": name, "replica_of": primary}))
    return entries


def copies_of(entries: Sequence[Mapping[str, Any]]) -> dict[str, Copy]:
    """Target name -> its Copy, for every target of a map's raw ``targets:`` (validated when the map was
    loaded) and every replica they declare."""
    found: dict[str, Copy] = {}
    for item in entries:
        for entry in [dict(item), *(entry for _, entry in replica_entries(item, []))]:
            if isinstance(entry.get("name"), str):
                backups = entry.get("backups")
                days = backups.get("retention_days") if isinstance(backups, dict) else None
                found[entry["name"]] = Copy(entry.get("replica_of"), int(days) if days else None)
    return found


def gone_by(erased: Sequence[tuple[str, datetime | None]],
            copies: Mapping[str, Copy]) -> tuple[dict[str, datetime | None], datetime | None]:
    """Per target, and for the request, when no copy holds the subject any more.

    ``erased``: each target with the time its purge was verified, or None when it was not erased (skipped,
    held, failed, not done yet). A replica is gone at its own verified time (plus the retention of backups
    it declares itself). A primary is gone at the latest verified time of itself and its replicas, plus its
    backups' retention (a replica erased later could have fed the primary until then: the later date is
    the safe one), and never before its replicas; null until every one of them is erased. The request is
    gone by the latest of its targets' (those erased; null when nothing was)."""
    verified = dict(erased)
    replicas: dict[str, list[str]] = {}
    for target, _ in erased:
        primary = copies.get(target, NO_COPY).replica_of
        if primary is not None:
            replicas.setdefault(primary, []).append(target)

    def plus_backups(target: str, at: datetime) -> datetime:
        return at + timedelta(days=copies.get(target, NO_COPY).retention_days or 0)

    per_target: dict[str, datetime | None] = {}
    for target, at in erased:  # replicas first: a primary's date is never before theirs
        if copies.get(target, NO_COPY).replica_of is not None:
            per_target[target] = plus_backups(target, at) if at else None
    for target, at in erased:
        if copies.get(target, NO_COPY).replica_of is None:
            group = [at, *(verified[r] for r in replicas.get(target, ()))]
            if None in group:
                per_target[target] = None
                continue
            latest = plus_backups(target, max(g for g in group if g is not None))
            per_target[target] = max([latest, *(per_target[r] or latest for r in replicas.get(target, ()))])
    # A primary not dated (a replica not erased) still dates what it did erase in the request's time.
    times = [at for at in per_target.values() if at] + [plus_backups(t, at) for t, at in erased if at]
    return {target: per_target[target] for target, _ in erased}, max(times) if times else None
