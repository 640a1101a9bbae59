"""What a worker process has loaded stays out of the cyclic garbage collector's way.

Python's collector scans every container object of the oldest generation at each full collection, and a
purge that parses millions of listing entries triggers one every few dozen pages. A worker's heap is large
and almost all of it permanent: Celery, SQLAlchemy, botocore's service models, and the libraries of the
stores it has purged (Feast, LanceDB, MLflow: 340k objects). Counting 300,000 S3 versions on a stub took
21.2 s in a process holding those, 13.1 s once they were frozen (``gc.freeze``), against 15.3 s in one
holding none of them unfrozen.

So a process freezes its heap when its pool process starts, after it builds its first target of a kind
(the client a target makes: botocore's model), and after it runs its first task of a kind (the libraries
an adapter imports on first use). Each stage happens once per process and kind, after a full collection,
so only objects in use are frozen; freezing does not stop reference counting from freeing them later.
"""

from __future__ import annotations

import gc

_settled: set[tuple[str, str]] = set()


def settle(stage: str, kind: str = "") -> None:
    """Freeze what this process holds now, once per ``(stage, kind)``."""
    if (stage, kind) in _settled:
        return
    _settled.add((stage, kind))
    gc.collect()
    gc.freeze()
