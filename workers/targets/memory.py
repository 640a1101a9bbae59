"""An in-memory target: records in a named, process-wide store. For tests, the demo and benchmarks.

Data map example::

    - name: sessions
      kind: memory
      store: sessions
      match: {owner: "{user_id}"}   # every record whose field equals the value belongs to the subject
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, ClassVar

from pydantic import Field, field_validator

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets import scans
from workers.targets.base import Heartbeat, RetryableError, ScanPage, TargetConfig, require_placeholder


class MemoryStore:
    """A list of records per store name, shared by every MemoryTarget in the process."""

    _lock = threading.Lock()
    _stores: ClassVar[dict[str, list[dict[str, Any]]]] = defaultdict(list)
    _failures_left: ClassVar[dict[str, int]] = {}  # target name -> injected failures still to raise

    @classmethod
    def take_failure(cls, target: str, fail_times: int) -> bool:
        """Testing aid: True for the first ``fail_times`` calls per target since the last clear()."""
        with cls._lock:
            left = cls._failures_left.setdefault(target, fail_times)
            cls._failures_left[target] = max(0, left - 1)
            return left > 0

    @classmethod
    def add(cls, store: str, *records: dict[str, Any]) -> None:
        with cls._lock:
            cls._stores[store].extend(dict(r) for r in records)

    @classmethod
    def records(cls, store: str) -> list[dict[str, Any]]:
        with cls._lock:
            return [dict(r) for r in cls._stores[store]]

    @classmethod
    def remove_where(cls, store: str, match: dict[str, str]) -> int:
        with cls._lock:
            kept = [r for r in cls._stores[store] if not _matches(r, match)]
            removed = len(cls._stores[store]) - len(kept)
            cls._stores[store] = kept
            return removed

    @classmethod
    def count_where(cls, store: str, match: dict[str, str]) -> int:
        with cls._lock:
            return sum(1 for r in cls._stores[store] if _matches(r, match))

    @classmethod
    def clear(cls) -> None:
        with cls._lock:
            cls._stores.clear()
            cls._failures_left.clear()


def _matches(record: dict[str, Any], match: dict[str, str]) -> bool:
    return all(field in record and str(record[field]) == value for field, value in match.items())


class MemoryConfig(TargetConfig):
    store: str = Field(description="Name of the in-process store.")
    match: dict[str, str] = Field(min_length=1, description="field -> templated value; all must be equal.")
    fail_times: int = Field(
        0, ge=0, description="Testing aid: the first N purges in this process raise a retryable error."
    )

    template_fields: ClassVar[tuple[str, ...]] = ("match",)

    @field_validator("match")
    @classmethod
    def _match_names_the_subject(cls, match: dict[str, str]) -> dict[str, str]:
        require_placeholder("match", match)
        return match


class MemoryTarget:
    kind: ClassVar[str] = "memory"
    Config: ClassVar[type[TargetConfig]] = MemoryConfig
    capabilities: ClassVar[frozenset[str]] = frozenset()
    level = "bytes_reclaimed"
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, config: MemoryConfig):
        self.config = config

    def _selector(self, subject: Subject) -> dict[str, str]:
        selector: dict[str, str] = fill(self.config.match, subject)
        return selector

    def count(self, subject: Subject) -> int:
        return MemoryStore.count_where(self.config.store, self._selector(subject))

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        if MemoryStore.take_failure(self.config.name, self.config.fail_times):
            raise RetryableError("memory store unavailable (injected failure)")
        heartbeat()
        return MemoryStore.remove_where(self.config.store, self._selector(subject))

    def verify(self, subject: Subject) -> int:
        return self.count(subject)

    def probe(self, earlier: object) -> list[str]:
        """An in-process store is created by its first write and cannot be unreachable: no problem to find."""
        return []

    def unscannable(self) -> str | None:
        return scans.match_unscannable(self.config, self.config.match, "records")

    def scan(self, after: object | None, limit: int) -> ScanPage:
        field, reverse = scans.scanned_field(self.config, self.config.match, "records")
        return scans.scan_records(MemoryStore.records(self.config.store), field, reverse, after, limit)
