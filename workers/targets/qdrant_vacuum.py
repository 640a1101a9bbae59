"""Making a Qdrant deletion physical, as far as the mode allows (the qdrant module's "Levels").

Local mode: ``VACUUM`` the collection's SQLite file, rewriting it from live rows. Server mode, with
``vacuum`` configured: make the vacuum optimizer rebuild every segment holding a deleted point, and wait
for it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from workers.targets.base import Heartbeat
from workers.targets.qdrant_config import QdrantConfig
from workers.targets.qdrant_errors import translate


def compact_local(client: Any, config: QdrantConfig) -> str:
    """VACUUM the collection's SQLite file so freed pages holding deleted points are gone."""
    name = config.collection
    with translate("get_aliases", config.collection):
        for alias in client.get_aliases().aliases:
            if alias.alias_name == name:
                name = alias.collection_name
    storage = Path(config.location or "") / "collection" / name / "storage.sqlite"
    if not storage.is_file():
        return "invisible"  # a layout this adapter does not know: nothing confirmed beyond the delete
    try:
        conn = sqlite3.connect(storage, timeout=30)
        try:
            conn.execute("VACUUM")
        finally:
            conn.close()
    except sqlite3.Error:
        return "invisible"
    return "bytes_reclaimed"


def vacuum_server(client: Any, config: QdrantConfig, heartbeat: Heartbeat) -> str:
    """With ``vacuum`` configured: every segment holding a deletion is rebuilt; wait for the optimizer."""
    from qdrant_client import models

    vacuum = config.vacuum
    if vacuum is None:
        return "invisible"
    try:
        client.update_collection(
            config.collection,
            optimizers_config=models.OptimizersConfigDiff(
                deleted_threshold=0.0, vacuum_min_vector_number=vacuum.min_vectors
            ),
        )
    except Exception:
        # The points are deleted; a key without rights on collection settings (or an outage now) only
        # means the vacuum is not confirmed, which the level says. Failing here would re-run the purge.
        return "invisible"
    # With deleted_threshold 0, a segment holding a deleted point needs optimizing, so it is queued or
    # running until rebuilt. Idle must be seen twice, a second apart, so a rebuild the new settings
    # have not scheduled yet is not mistaken for one that is done.
    deadline = time.monotonic() + vacuum.wait_seconds
    idle_seen = 0
    while True:
        heartbeat()
        try:
            progress = client.get_optimizations(config.collection, with_="queued")
        except Exception:
            return "invisible"  # a server without the optimizations API: nothing confirmed
        idle = not progress.running and progress.summary.queued_optimizations == 0
        idle_seen = idle_seen + 1 if idle else 0
        if idle_seen >= 2:
            return "unindexed"
        if time.monotonic() >= deadline:
            return "invisible"
        time.sleep(1.0)

