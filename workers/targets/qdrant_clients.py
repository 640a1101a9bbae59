"""Qdrant clients, cached per process: one per local-mode folder (local mode locks its folder to one
client) and one per server URL and key.

Every operation on a local store holds that folder's lock, so the reopen after a purge (which rebuilds the
client's memory from disk) cannot pull a client from under a concurrent target in the same process. Call
``close_clients()`` to release the folders (tests, shutdown).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

_clients: dict[tuple[str, ...], Any] = {}
_local_locks: dict[str, threading.RLock] = {}
_clients_lock = threading.Lock()


def _local_key(location: str) -> str:
    return os.path.realpath(location)


def qdrant_client(location: str | None = None, url: str | None = None, api_key: str | None = None,
                  timeout: int = 30) -> Any:
    """One client per local folder or server per process: local mode locks its folder to one client."""
    from qdrant_client import QdrantClient

    with _clients_lock:
        if location is not None:
            key: tuple[str, ...] = ("local", _local_key(location))
        else:
            assert url is not None
            secret = hashlib.sha256((api_key or "").encode()).hexdigest()
            key = ("server", url, secret, str(timeout))
        if key not in _clients:
            if location is not None:
                _clients[key] = QdrantClient(path=location)
            else:
                # No version-check thread: it only warns, from a background thread, when the server is down.
                _clients[key] = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        return _clients[key]


def local_lock(location: str) -> threading.RLock:
    with _clients_lock:
        return _local_locks.setdefault(_local_key(location), threading.RLock())


def reopen_local(location: str) -> Any:
    """Close the folder's cached client and open it again: memory is rebuilt from what is on disk."""
    with _clients_lock:
        old = _clients.pop(("local", _local_key(location)), None)
    if old is not None:
        old.close()
    return qdrant_client(location=location)


def close_clients() -> None:
    """Close every cached client, releasing local folders (tests, worker shutdown)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()

