"""Re-erase after a restore (``lethe replay``, ``lethe.store.restored``): one follow-up request per subject
erased since a date whose data the restored target holds again.

Tombstones keep only keyed hashes, so lethe cannot list the subjects erased since a date in the clear; the
restored store holds their identifiers again, so the store is scanned (``workers.targets.base.Scanned``):
each value found is validated as a request's value of that kind would be (invalid ones are skipped and
counted), hashed, and kept only when its hash has a tombstone from ``since`` on. A subject the store holds
that was never erased is never purged. Each follow-up is filed for that one target through the one
follow-up path (orchestrator.followups), in bulk (one ledger transaction per page), under an idempotency key
derived from (target, since, the subject's hash, the request that erased it last): running the same replay
again (twice, or after a crash) files nothing twice while those follow-ups are open; once one completed, it
is the subject's latest erasure, so the same copy restored again is erased again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator.followups import derived_key, file_follow_ups, follow_up
from orchestrator.identifiers import InvalidIdentifier, Subject, keyed_hash, normalise_value
from orchestrator.logs import get_logger
from orchestrator.times import to_utc
from workers.targets.base import Scanned, ScanPage, TargetConfig, build_target

if TYPE_CHECKING:
    from orchestrator.datamap import DataMap
    from orchestrator.service import Lethe

log = get_logger("lethe.replay")
PAGE = 1000  # store entries per scan page: one tombstone lookup and one ledger transaction each


class ReplayError(ValueError):
    """A replay that cannot run as asked (an unknown or unscannable target): one line, nothing filed."""


@dataclass
class Tally:
    """What a replay (or one watch window) did: distinct values scanned, how many were no valid
    identifier, how many had a tombstone since the date, and of those how many follow-ups were filed now or
    had been filed before (a rerun)."""

    scanned: int = 0
    invalid: int = 0
    tombstoned: int = 0
    filed: int = 0
    already_filed: int = 0
    requests: list[str] = field(default_factory=list, repr=False)  # the follow-ups filed now

    def as_dict(self) -> dict[str, int]:
        return {"scanned": self.scanned, "invalid": self.invalid, "tombstoned": self.tombstoned,
                "filed": self.filed, "already_filed": self.already_filed}


@dataclass(frozen=True)
class Scanner:
    """A target ready to scan: its configuration, the adapter, and its one identifier kind with the map's
    pattern for it."""

    config: TargetConfig
    target: Scanned
    kind: str
    pattern: re.Pattern[str] | None

    def pages(self, after: object | None = None, limit: int = PAGE) -> Iterator[ScanPage]:
        """Every page from ``after`` to the end of the store."""
        while True:
            page = self.target.scan(after, limit)
            yield page
            if page.next is None:
                return
            after = page.next


def scanner(datamap: DataMap, name: str) -> Scanner:
    """The target ``name`` ready to scan, or ReplayError saying why it cannot be and what to do instead."""
    try:
        config = datamap.target(name)
    except KeyError:
        known = ", ".join(t.name for t in datamap.targets)
        raise ReplayError(f"the data map has no target {name!r} (targets: {known})") from None
    target = build_target(config)
    if not isinstance(target, Scanned):
        raise ReplayError(f"target {name} (kind {config.kind}) cannot be scanned for subjects: re-file the "
                          "restored subjects with `lethe submit` or data_written events")
    why = target.unscannable()
    if why is not None:
        raise ReplayError(why)
    (kind,) = config.required_identifiers()  # unscannable() refused any other number
    return Scanner(config, target, kind, datamap.identifiers.get(kind))


def tombstoned(lethe: Lethe, scan: Scanner, values: list[str], since: datetime, tally: Tally,
               seen: set[str] | None = None) -> list[tuple[Subject, str, str]]:
    """(subject, keyed hash, the request that erased it) for each value of one page whose hash has a tombstone
    from ``since`` on: one ledger lookup for the page. Values no request could carry are counted invalid; so
    is a value stored in another spelling than its canonical one (the selector, filled with the canonical
    value, would not reach it). ``seen``: hashes met on earlier pages of the same run, skipped (a subject
    whose objects span two pages is one subject)."""
    key = lethe.settings.subject_key_bytes
    valid: dict[str, str] = {}
    for value in values:
        try:
            canonical = normalise_value(scan.kind, value, scan.pattern)
        except InvalidIdentifier:
            canonical = None
        if canonical != value:
            tally.invalid += 1
            tally.scanned += 1
            continue
        digest = keyed_hash(key, scan.kind, value)
        if seen is not None:
            if digest in seen:
                continue
            seen.add(digest)
        valid[digest] = value
        tally.scanned += 1
    erased = lethe.ledger.tombstoned_since(valid, since) if valid else {}
    tally.tombstoned += len(erased)
    return [(Subject({scan.kind: valid[digest]}), digest, follows) for digest, follows in erased.items()]


def file_page(lethe: Lethe, datamap: DataMap, scan: Scanner, found: list[tuple[Subject, str, str]], *,
              actor: str, reason: str, key_parts: Callable[[str, str], tuple[str, ...]], tally: Tally) -> None:
    """One follow-up per found subject, in one ledger transaction; ``key_parts(hash, follows)`` names it."""
    if not found:
        return
    submissions = [follow_up(subject, follows, reason, derived_key(*key_parts(digest, follows)))
                   for subject, digest, follows in found]
    for request_id, created in file_follow_ups(lethe, datamap, scan.config.name, submissions, actor=actor):
        if created:
            tally.filed += 1
            tally.requests.append(request_id)
        else:
            tally.already_filed += 1


def default_since(lethe: Lethe) -> datetime:
    """The start of the tombstone period: every tombstone still kept."""
    from datetime import UTC, timedelta

    return datetime.now(UTC) - timedelta(days=lethe.settings.tombstone_days)


def replay(lethe: Lethe, datamap: DataMap, name: str, since: datetime | None = None, *, actor: str,
           on_page: Callable[[Tally], None] | None = None) -> Tally:
    """Scan the target ``name`` to its end and file a follow-up for every subject erased since ``since``
    (default: the tombstone period) that it holds. Resumable: a rerun (after a crash, or twice) files only
    what is missing. ``on_page(tally)`` after each page."""
    scan = scanner(datamap, name)
    since = to_utc(since) if since is not None else default_since(lethe)
    stamp = since.isoformat()
    tally = Tally()
    reason = f"{name} restored from a copy taken {stamp}"
    seen: set[str] = set()  # keyed hashes only: a run holds no identifier beyond the page it reads
    for page in scan.pages(limit=PAGE):
        found = tombstoned(lethe, scan, page.values, since, tally, seen)
        file_page(lethe, datamap, scan, found, actor=actor, reason=reason, tally=tally,
                  key_parts=lambda digest, follows: (name, stamp, digest, follows))
        if on_page:
            on_page(tally)
    log.info("replay.done", target=name, since=stamp, **tally.as_dict())
    return tally


def replay_task(lethe: Lethe, target: str, since: str, actor: str) -> dict[str, Any]:
    """The control queue's ``lethe.replay`` task (a ``lethe.store.restored`` event): the same replay, off
    the intake's loop. A target the map no longer scans is logged, not retried."""
    try:
        tally = replay(lethe, lethe.load_map(), target, datetime.fromisoformat(since), actor=actor)
    except ReplayError as exc:
        log.error("replay.refused", target=target, error=str(exc))
        return {"refused": str(exc)}
    return tally.as_dict()
