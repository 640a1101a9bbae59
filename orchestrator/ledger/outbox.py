"""Events out (the outbox's publishing) and dead-letter counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from orchestrator.ledger.common import (
    among,
    insert_if_absent,
    now,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.models import (
    DeadLetterCount,
    OutboxEvent,
)


class OutboxLedger(LedgerCore):
    def publish_outbox(self, publish: Callable[[str, dict[str, Any]], None], limit: int = 500) -> int:
        """Hand unpublished events to ``publish(type, event)`` in order and mark them published. Rows are
        locked (skipped by other publishers); a failed publish leaves them for the next call. Consumers
        deduplicate on the CloudEvent id if a crash after publishing sends one twice."""
        with self.sessions.begin() as s:
            rows = s.execute(select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.body)
                             .where(OutboxEvent.published_at.is_(None))
                             .order_by(OutboxEvent.id).limit(limit).with_for_update(skip_locked=True)).all()
            for _, event_type, body in rows:
                publish(event_type, json.loads(body))
            if rows:
                published = [row[0] for row in rows]
                s.execute(update(OutboxEvent).where(among(s, OutboxEvent.id, published)).values(published_at=now()))
            return len(rows)

    def count_dead_letter(self, reason: str) -> None:
        with self.sessions.begin() as s:
            insert_if_absent(s, DeadLetterCount, reason=reason, count=0)
            s.execute(update(DeadLetterCount).where(DeadLetterCount.reason == reason)
                      .values(count=DeadLetterCount.count + 1))

    def dead_letter_counts(self) -> dict[str, int]:
        with self.sessions() as s:
            return {r.reason: r.count for r in s.scalars(select(DeadLetterCount))}

