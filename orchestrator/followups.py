"""Follow-up erasures: one target again, for identifiers erased before, each recording the request it
follows. The one mechanism behind ``lethe.subject.data_written`` (orchestrator.intake), ``lethe replay`` and
``lethe.store.restored`` (orchestrator.replay) and the resurrection watch (orchestrator.watch): they differ
only in how they find the subjects and in the idempotency key that keeps each from being filed twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.identifiers import Subject
from orchestrator.ledger import stored_idempotency_key
from orchestrator.planner import Submission

if TYPE_CHECKING:
    from orchestrator.datamap import DataMap
    from orchestrator.service import Lethe


def follow_up(subject: Subject, follows: str | None, reason: str, key: str | None) -> Submission:
    """The submission of one follow-up: ``subject`` holds only identifiers that have tombstones, ``follows``
    the request that erased them (kept in the request's audit trail as ``follow_up_of``)."""
    return Submission(subject, key, {"follow_up_of": follows, "reason": reason})


def derived_key(*parts: str) -> str:
    """A stored idempotency key derived from ``parts`` (a target, a date, a keyed hash; never a raw value):
    the same parts always give the same key, so a rerun files nothing twice."""
    return stored_idempotency_key("replay", hashlib.sha256("\0".join(parts).encode()).hexdigest())


def file_follow_ups(lethe: Lethe, datamap: DataMap, target: str, submissions: Sequence[Submission], *,
                    actor: str) -> list[tuple[str, bool]]:
    """File follow-ups of ``target`` alone, in one ledger transaction (the service's one filing path).
    Returns (request id, created) per submission: created False for a key already filed."""
    return lethe.file_many(datamap, submissions, actor=actor, only_targets=[target])
