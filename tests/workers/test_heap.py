"""A worker process freezes its heap once per stage and target kind, and never freezes garbage."""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from workers import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def fresh_heap() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_each_stage_and_kind_freezes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted through heap's own reference to gc, with stages no one else uses: worker threads of earlier
    tests in this process may settle their own stages meanwhile."""
    frozen: list[int] = []
    monkeypatch.setattr(heap, "gc", SimpleNamespace(collect=gc.collect, freeze=lambda: frozen.append(1)))
    stage = f"test-{uuid.uuid4().hex}"
    heap.settle(stage, "s3")
    heap.settle(stage, "s3")
    assert len(frozen) == 1  # the same stage and kind: once
    heap.settle(stage, "lancedb")
    heap.settle(f"{stage}-other", "s3")
    assert len(frozen) == 3


def test_garbage_is_collected_before_the_freeze(fresh_heap: None) -> None:
    """A cycle no one holds is freed, not frozen (a frozen one would never be collected)."""
    node = Node()
    gone = weakref.ref(node)
    del node
    heap.settle(f"test-{uuid.uuid4().hex}", "memory")
    assert gone() is None and gc.get_freeze_count() > 0
