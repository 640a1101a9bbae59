"""What an S3 task's blast-radius count listed, kept for the purge that follows it on the same adapter.

A count lists every version of the subject; keeping that listing lets the purge delete without listing again
(one listing per erasure, besides verify's). A listing is kept in memory up to a budget shared by the
adapter's listings (``S3Target``), and past it in a temporary file, so a count of millions of versions (a
dataset withdrawal an admin approved in advance) keeps memory flat and still lists once.

The file holds S3 keys, and keys name subjects (``users/123/...``). It is unlinked from its creation, but
its blocks outlive it on disk, so every page is sealed (ChaCha20-Poly1305) under a key made for this listing
that lives only in this object: once the listing is gone, what is left on disk is noise. The file is
bounded too (``S3Target`` stops keeping a listing past ``SPILL_MAX`` versions; its purge then streams).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import IO

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

Version = tuple[str, str]  # (key, version id)
_LENGTH = 4  # bytes of each sealed page's length prefix


class KeptListing:
    """(key, version id) pairs in listing order: the first ``memory_room`` in memory, the rest sealed on disk."""

    def __init__(self, memory_room: int):
        self.total = 0
        self._memory: list[Version] = []
        self._memory_room = max(0, memory_room)
        self._file: IO[bytes] | None = None
        self._cipher: ChaCha20Poly1305 | None = None
        self._pages = 0

    @property
    def in_memory(self) -> int:
        return len(self._memory)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def add(self, page: list[Version]) -> None:
        self.total += len(page)
        if self._file is None and len(self._memory) + len(page) <= self._memory_room:
            self._memory += page
            return
        if self._file is None or self._cipher is None:
            self._file = tempfile.TemporaryFile(prefix="lethe-listing-")  # noqa: SIM115 - lives as long as the listing (close)
            self._cipher = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
        # A fresh key per listing, so a counter is a nonce never used twice under it.
        sealed = self._cipher.encrypt(self._pages.to_bytes(12, "big"), json.dumps(page).encode(), None)
        self._pages += 1
        self._file.write(len(sealed).to_bytes(_LENGTH, "big") + sealed)

    def batches(self, size: int) -> Iterator[list[Version]]:
        """Every pair once, in listing order, ``size`` at a time (the last batch may be shorter)."""
        pending = list(self._memory)
        for page in self._read_back():
            pending += page
            while len(pending) >= size:
                yield pending[:size]
                del pending[:size]
        while pending:
            yield pending[:size]
            del pending[:size]

    def _read_back(self) -> Iterator[list[Version]]:
        if self._file is None or self._cipher is None:
            return
        self._file.flush()
        self._file.seek(0)
        for n in range(self._pages):
            length = int.from_bytes(self._file.read(_LENGTH), "big")
            page = json.loads(self._cipher.decrypt(n.to_bytes(12, "big"), self._file.read(length), None))
            yield [(key, version) for key, version in page]

    def close(self) -> None:
        """Forget the listing: the file goes, and with the key what it held cannot be read."""
        self._memory = []
        if self._file is not None:
            self._file.close()
        self._file, self._cipher = None, None
