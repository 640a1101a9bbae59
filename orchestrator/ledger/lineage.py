"""Lineage: which recorded training datasets hold which subjects (as keyed hashes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import delete, insert, select, update

from orchestrator.certificates import rfc3339
from orchestrator.ledger.common import (
    now,
)
from orchestrator.ledger.core import LedgerCore
from orchestrator.ledger.models import (
    Dataset,
    DatasetMember,
)


class LineageLedger(LedgerCore):
    def record_lineage(self, name: str, digest: str, subject_hashes: Iterable[str], actor: str = "cli",
                       on_progress: Callable[[int], None] | None = None) -> int:
        """Record which subjects (as keyed hashes) a training dataset holds; recording the same dataset
        again replaces its members. Bulk-loaded: COPY on PostgreSQL, batched inserts on SQLite."""
        at = now()
        with self.sessions.begin() as s:
            s.execute(delete(DatasetMember).where(DatasetMember.dataset_name == name,
                                                  DatasetMember.dataset_digest == digest))
            s.execute(delete(Dataset).where(Dataset.name == name, Dataset.digest == digest))
            s.add(Dataset(name=name, digest=digest, members=0, recorded_at=at))
            s.flush()
            count = 0
            if s.get_bind().dialect.name == "postgresql":
                raw = s.connection().connection.driver_connection
                assert raw is not None
                with raw.cursor() as cur:
                    # COPY into a narrow temporary table, then one insert in hash order: index pages are
                    # filled in sequence instead of at random (about twice as fast at millions of rows).
                    cur.execute("CREATE TEMP TABLE lineage_load (subject_hash varchar(64)) ON COMMIT DROP")
                    with cur.copy("COPY lineage_load (subject_hash) FROM STDIN") as copy:
                        for subject_hash in subject_hashes:
                            copy.write_row((subject_hash,))
                            count += 1
                            if on_progress and count % 10_000 == 0:
                                on_progress(count)
                    cur.execute("INSERT INTO dataset_members (dataset_name, dataset_digest, subject_hash) "
                                "SELECT %s, %s, subject_hash FROM lineage_load ORDER BY subject_hash", (name, digest))
            else:
                batch: list[dict[str, str]] = []
                for subject_hash in subject_hashes:
                    batch.append({"dataset_name": name, "dataset_digest": digest, "subject_hash": subject_hash})
                    if len(batch) == 10_000:
                        s.execute(insert(DatasetMember), batch)
                        count += len(batch)
                        batch = []
                        if on_progress:
                            on_progress(count)
                if batch:
                    s.execute(insert(DatasetMember), batch)
                    count += len(batch)
            s.execute(update(Dataset).where(Dataset.name == name, Dataset.digest == digest).values(members=count))
            self._audit(s, "lineage.recorded", None, actor=actor,
                        detail={"dataset_name": name, "dataset_digest": digest, "members": count})
            return count

    def list_datasets(self) -> list[dict[str, Any]]:
        """The training datasets recorded with ``record_lineage``, newest first, with how many subjects each
        holds (never who)."""
        with self.sessions() as s:
            rows = s.scalars(select(Dataset).order_by(Dataset.recorded_at.desc(), Dataset.name, Dataset.digest))
            return [{"name": d.name, "digest": d.digest, "members": d.members, "recorded_at": rfc3339(d.recorded_at)}
                    for d in rows]

    def datasets_for(self, subject_hashes: Iterable[str]) -> list[tuple[str, str]]:
        """(name, digest) of every recorded dataset that holds one of these subjects (one indexed lookup)."""
        with self.sessions() as s:
            found = self._datasets_of(s, subject_hashes)
        return sorted({d for datasets in found.values() for d in datasets})

