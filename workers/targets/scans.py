"""Scanning a store for the identifier values its selector can match (base.Scanned): what ``lethe replay``
re-erases after a restore and what the resurrection watch samples.

A restored store holds the identifiers again, while lethe's tombstones hold only their keyed hashes: so the
store is read, never the tombstones. Each adapter lists the values of its selector's one placeholder: S3 the
keys under the template's literal head (``users/{user_id}/`` -> ``users/``), each key reverse-matched
against the template; sql the distinct values of the ``where`` column; LanceDB and memory the ``match``
column's values. The caller validates, hashes and checks each value against the tombstones; a value whose
subject was never erased is never purged.

Reverse matching is exact: a value is extracted from a key only when filling the template with it gives the
key's own prefix, cut where the template's ``/`` separators put it (values never hold a ``/``), so ``12``
is never read out of ``users/123/``. A template with placeholders of two kinds (``{org}/{user_id}/``) is not
scanned: its split would be ambiguous, and a follow-up needs every kind erased before.

Positions (``ScanPage.next``) are the store's own (an object key, a column value, a row offset): they can
hold an identifier, so callers keep them in memory only.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any

from workers.targets.base import PermanentError, ScanPage, TargetConfig

_FORMATTER = string.Formatter()


class Reverse:
    """A ``{kind}`` template read backwards: the value a filled string was made from, or None."""

    def __init__(self, template: str):
        parts = list(_FORMATTER.parse(template))
        kinds = {name for _literal, name, _spec, _conversion in parts if name is not None}
        if len(kinds) != 1:
            raise ValueError("a scanned template holds placeholders of exactly one identifier kind")
        (self.kind,) = kinds
        self.template = template
        self.head = parts[0][0]  # the literal text before the first placeholder
        pattern, seen = [], False
        for literal, name, _spec, _conversion in parts:
            pattern.append(re.escape(literal))
            if name is not None:
                pattern.append("(?P=v)" if seen else "(?P<v>[^/]+)")  # no value holds a '/'
                seen = True
        self.regex = re.compile("".join(pattern), re.DOTALL)
        self.slashes = sum(literal.count("/") for literal, *_ in parts)

    def value(self, filled: str) -> str | None:
        """The value ``filled`` is the template filled with, or None when it is no filling of it."""
        found = self.regex.fullmatch(filled)
        return found.group("v") if found else None

    def value_of_key(self, key: str) -> str | None:
        """For a prefix template ending at '/': the value whose filled prefix the key lies under, or None."""
        end = -1
        for _ in range(self.slashes):
            end = key.find("/", end + 1)
            if end < 0:
                return None
        return self.value(key[:end + 1])


def match_unscannable(config: TargetConfig, mapping: dict[str, str] | None, noun: str) -> str | None:
    """Why a ``match``/``where`` selector cannot be scanned (a lookup query instead, several kinds), or None."""
    if mapping is None:
        return (f"target {config.name} selects by a lookup query, which lists no {noun} to scan; re-file the "
                "restored subjects with `lethe submit` or a data_written event")
    return unscannable_kinds(config)


def scanned_field(config: TargetConfig, mapping: dict[str, str] | None, noun: str) -> tuple[str, Reverse]:
    """The (field, reversed template) of a ``match``/``where`` selector to scan: the first field holding the
    placeholder (other fields only narrow what a purge matches, so the values read are a superset)."""
    why = match_unscannable(config, mapping, noun)
    if why is not None:
        raise PermanentError(why)
    assert mapping is not None
    for field, template in mapping.items():
        if "{" in template.replace("{{", ""):
            return field, Reverse(template)
    raise PermanentError(f"target {config.name}'s selector holds no placeholder")


def unscannable_kinds(config: TargetConfig) -> str | None:
    """Why a target whose selector needs several identifier kinds cannot be scanned, or None."""
    kinds = config.required_identifiers()
    if len(kinds) != 1:
        return (f"target {config.name}'s selector needs {len(kinds)} identifier kinds; a scan reads one "
                "(file follow-ups with `lethe submit` instead)")
    return None


def _text(raw: Any) -> str | None:
    """A stored value as the text a request would carry (``12`` for an integer), or None for a null."""
    if raw is None or isinstance(raw, bytes | bytearray | float | bool | dict | list):
        return None  # no identifier is stored as bytes or a float: nothing a selector could be filled with
    return str(raw)


def _distinct(values: Iterable[Any], reverse: Reverse) -> list[str]:
    found: dict[str, None] = {}
    for raw in values:
        text = _text(raw)
        value = reverse.value(text) if text is not None else None
        if value is not None:
            found.setdefault(value)
    return list(found)


# -- S3 --------------------------------------------------------------------------------------------------
def scan_s3(client: Any, bucket: str, reverse: Reverse, after: object | None, limit: int) -> ScanPage:
    """One ListObjectVersions page (up to ``limit`` versions and delete markers, at most 1,000) under the
    template's literal head; every version counts, so a subject kept only by an old version is found. The
    position is the last key listed: the next page starts after it (the rest of that key's versions hold
    the same value)."""
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": reverse.head, "MaxKeys": max(1, min(limit, 1000))}
    if after is not None:
        args["KeyMarker"] = after
    page = client.list_object_versions(**args)
    keys = [item["Key"] for item in (*page.get("Versions", ()), *page.get("DeleteMarkers", ()))]
    values: dict[str, None] = {}
    for key in keys:
        value = reverse.value_of_key(key)
        if value is not None:
            values.setdefault(value)
    truncated = bool(page.get("IsTruncated")) and bool(keys)
    return ScanPage(list(values), len(keys), (page.get("NextKeyMarker") or max(keys)) if truncated else None)


# -- sql -------------------------------------------------------------------------------------------------
def scan_sql(engine: Any, table: Any, column: str, reverse: Reverse, after: object | None, limit: int) -> ScanPage:
    """``SELECT DISTINCT column … ORDER BY column LIMIT n``, continuing after the last value read (the
    column's index, when it has one, makes each page one range read)."""
    from sqlalchemy import select

    col = table.c[column]
    query = select(col).where(col.is_not(None)).distinct().order_by(col).limit(limit)
    if after is not None:
        query = query.where(col > after)
    with engine.connect() as conn:
        rows = [row[0] for row in conn.execute(query)]
    return ScanPage(_distinct(rows, reverse), len(rows), rows[-1] if len(rows) == limit else None)


# -- LanceDB ---------------------------------------------------------------------------------------------
def scan_lance(dataset: Any, column: str, reverse: Reverse, after: object | None, limit: int) -> ScanPage:
    """The column of ``limit`` rows of the current version from row offset ``after`` (LanceDB has no
    DISTINCT; one column is read, never the vectors)."""
    if column not in dataset.schema.names:
        raise PermanentError(f"LanceDB table has no column {column}")
    offset = int(after or 0)  # type: ignore[call-overload]
    rows = dataset.to_table(columns=[column], offset=offset, limit=limit).column(column).to_pylist()
    return ScanPage(_distinct(rows, reverse), len(rows), offset + len(rows) if len(rows) == limit else None)


# -- Qdrant ----------------------------------------------------------------------------------------------
def scan_qdrant(client: Any, collection: str, field: str, reverse: Reverse, after: object | None,
                limit: int) -> ScanPage:
    """A scroll of ``limit`` points from offset ``after`` (a point id) with only the payload field read."""
    records, next_offset = client.scroll(collection, limit=limit, offset=after, with_payload=[field],
                                         with_vectors=False)
    values = [(record.payload or {}).get(field) for record in records]
    return ScanPage(_distinct(values, reverse), len(records), next_offset)


# -- memory ----------------------------------------------------------------------------------------------
def scan_records(records: list[dict[str, Any]], field: str, reverse: Reverse, after: object | None,
                 limit: int) -> ScanPage:
    """The field of ``limit`` records from position ``after``."""
    offset = int(after or 0)  # type: ignore[call-overload]
    window = records[offset:offset + limit]
    values = [record.get(field) for record in window]
    return ScanPage(_distinct(values, reverse), len(window), offset + limit if len(window) == limit else None)
