"""The in-memory target runs the target contract."""

from __future__ import annotations

import pytest

from tests.contract.base import ContractStore, TargetContract
from workers.targets.memory import MemoryConfig, MemoryStore, MemoryTarget

STORE = "contract-sessions"


class MemoryContractStore:
    """Three records per subject in one process-wide store, plus records that belong to no subject."""

    def __init__(self) -> None:
        # Near misses of subject 12: another field, a leading zero, a longer value.
        MemoryStore.add(STORE, {"other": "12"}, {"owner": "012"}, {"owner": "12x"}, {"owner": "1"})

    def seed(self, user_id: str) -> int:
        MemoryStore.add(STORE, *({"owner": user_id, "session": n} for n in range(3)))
        return 3

    def remaining(self, user_id: str) -> int:
        return sum(1 for r in MemoryStore.records(STORE) if r.get("owner") == user_id)

    def total(self) -> int:
        return len(MemoryStore.records(STORE))


class TestMemoryContract(TargetContract):
    @pytest.fixture
    def store(self) -> ContractStore:
        return MemoryContractStore()

    @pytest.fixture
    def target(self, store: ContractStore) -> MemoryTarget:
        return MemoryTarget(MemoryConfig(name="sessions", kind="memory", store=STORE,
                                         match={"owner": "{user_id}"}))
