"""Stored data maps: the ledger keeps each map's text under its SHA-256 and reads only the few fields it
answers for itself (a certificate's exemptions, the blast radius verify-ledger checks). The service parses
and validates maps before anything is filed; the ledger does not plan, so it imports no map parser."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import yaml

from orchestrator.copies import Copy, copies_of, replica_entries

DEFAULT_MAX_ITEMS = 100_000  # blast radius of a target without max_items: more waits for an admin


def text_matches(text: str, digest: str) -> bool:
    """The stored text is the one its digest names (a database writer may have replaced it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest() == digest


def _entries(map_text: str, key: str) -> list[dict[str, Any]]:
    try:
        doc = yaml.safe_load(map_text)
    except yaml.YAMLError:
        return []
    entries = doc.get(key) if isinstance(doc, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def exemptions(map_text: str) -> list[dict[str, str]]:
    """The stores a map declares not erased, with why (each certificate lists them)."""
    return [{"store": store, "reason": reason} for store, reason in _exemptions(map_text)]


@lru_cache(maxsize=64)
def _exemptions(map_text: str) -> tuple[tuple[str, str], ...]:
    # Cached: every certificate asks, and parsing the map's YAML cost more than the rest of issuing one.
    return tuple((str(st["name"]), str(st["not_erased"])) for st in _entries(map_text, "stores")
                 if st.get("not_erased"))


def max_items(map_text: str) -> dict[str, int]:
    """Target name -> the most items one purge may delete without an admin's approval (replicas too: each
    is a target of its own, with its primary's limit unless it overrides it)."""
    entries = _entries(map_text, "targets")
    expanded = [*entries, *(replica for t in entries for _, replica in replica_entries(t, []))]
    return {str(t["name"]): int(t.get("max_items") or DEFAULT_MAX_ITEMS) for t in expanded if "name" in t}


@lru_cache(maxsize=64)
def copies(map_text: str) -> Mapping[str, Copy]:
    """Target name -> the primary it mirrors and its backups' retention, for dating ``gone_by`` (cached:
    status reads ask for every request; a stored map never changes)."""
    return MappingProxyType(copies_of(_entries(map_text, "targets")))
