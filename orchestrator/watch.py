"""The resurrection watch: each ``lethe reconcile`` pass reads a bounded window of every scannable target
(LETHE_WATCH_ITEMS store entries), rolling through the store, and files a follow-up for every value found
whose subject has a tombstone: data of an erased subject that came back (a restore nobody announced, a
replica that resynced, a writer that ignored the erasure).

It samples the store, not the tombstones (docs/decisions.md): a tombstone is a keyed hash, and checking
one against a store means a lookup per tombstone per target; a window of the store is one listing whose
values are hashed here and checked against the tombstones in one ledger query.

The position in each store is kept in this process's memory only: it is the store's own position (an
object key, a column value) and can hold an identifier, so it is never persisted or logged. A restarted
watch starts again from the beginning of each store. Follow-ups are filed by the actor
``RESURRECTION_ACTOR:<target>``, which is how the ledger counts them (``lethe_resurrections_total{target}``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from orchestrator.datamap import DataMapError
from orchestrator.ledger import RESURRECTION_ACTOR
from orchestrator.logs import get_logger
from orchestrator.replay import ReplayError, Scanner, Tally, file_page, scanner, tombstoned
from orchestrator.times import to_utc
from workers.targets.base import TargetError

if TYPE_CHECKING:
    from orchestrator.datamap import DataMap
    from orchestrator.service import Lethe

log = get_logger("lethe.watch")


def _watch_key(target: str, digest: str, follows: str) -> tuple[str, ...]:
    """What a watch follow-up's idempotency key is derived from. The erasing request is in it: residue back
    after a follow-up completed (a new tombstone) files a new follow-up; one still open is not filed twice."""
    return ("watch", target, digest, follows)


class Watch:
    """One process's watch: the stores' positions, in memory."""

    def __init__(self, lethe: Lethe, items: int | None = None):
        self.lethe = lethe
        self.items = lethe.settings.watch_items if items is None else items
        self._after: dict[str, object | None] = {}  # target name -> where its next window starts
        self._scanners: dict[tuple[str, str], Scanner | None] = {}  # (map digest, target) -> scanner or None

    def _scanner(self, datamap: DataMap, name: str) -> Scanner | None:
        key = (datamap.digest, name)
        if key not in self._scanners:
            try:
                self._scanners[key] = scanner(datamap, name)
            except (ReplayError, LookupError):  # not scannable, or its extra is missing: `lethe replay` says why
                self._scanners[key] = None
        return self._scanners[key]

    def run(self, datamap: DataMap | None = None) -> dict[str, Tally]:
        """One window of every scannable target; a target whose store fails is logged and skipped (the
        next pass tries again). Returns what each window found."""
        if self.items <= 0:
            return {}
        from orchestrator.replay import default_since

        if datamap is None:
            try:
                datamap = self.lethe.load_map()
            except DataMapError as exc:  # the watch never stops reconcile's own work; the map's owner is told
                log.warning("watch.no_map", error=str(exc).splitlines()[0][:200])
                return {}
        since = default_since(self.lethe)
        tallies: dict[str, Tally] = {}
        for config in datamap.targets:
            scan = self._scanner(datamap, config.name)
            if scan is None:
                continue
            tally = Tally()
            try:
                page = scan.target.scan(self._after.get(config.name), self.items)
                found = tombstoned(self.lethe, scan, page.values, since, tally)
                file_page(self.lethe, datamap, scan, found, actor=f"{RESURRECTION_ACTOR}:{config.name}",
                          reason=f"resurrection: erased data found again in {config.name}", tally=tally,
                          key_parts=partial(_watch_key, config.name))
            except TargetError as exc:
                log.warning("watch.scan_failed", target=config.name, error=str(exc))
                continue
            self._after[config.name] = page.next  # None: the next window starts again at the beginning
            tallies[config.name] = tally
            if tally.filed:
                log.warning("watch.resurrections", target=config.name, filed=tally.filed,
                            since=to_utc(since).isoformat())
        return tallies
