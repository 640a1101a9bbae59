"""What a worker needs from the process it runs in: the ledger, a way to send work, and the settings.

``orchestrator.service.Lethe`` is the one implementation; the worker names only this Protocol, so the
service can build the worker's app without an import circle (service -> workers.app -> workers.tasks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.ledger import Dispatch, Ledger


class WorkerHost(Protocol):
    @property
    def settings(self) -> Settings:
        """The process's settings: lease, retries, slice length, broker."""
        ...

    @property
    def ledger(self) -> Ledger:
        """The ledger of this process (recreated in a forked child)."""
        ...

    def send(self, dispatches: list[Dispatch], countdown: float | None = None) -> int:
        """Hand tasks to the broker after the ledger committed them; returns how many were not dispatched."""
        ...

    def publish_events(self) -> int:
        """Publish the ledger's pending outbound events; returns how many went out."""
        ...

    def reconcile(self) -> int:
        """Re-send lost tasks, resume expired holds, prune, sign the head; returns how many were sent."""
        ...

    def replay(self, target: str, since: str, actor: str) -> dict[str, Any]:
        """Re-erase from one restored target every subject erased since ``since`` (ISO 8601): the
        ``lethe.replay`` task a ``lethe.store.restored`` event sends. Returns what it did (counts)."""
        ...
