"""Property: erasing any subset of subjects removes exactly the union of their data, and nothing else."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.identifiers import Subject
from orchestrator.testing import make_bucket, put_objects, versions_per_owner
from workers.targets.memory import MemoryConfig, MemoryStore, MemoryTarget
from workers.targets.s3 import S3Config, S3Target

pytestmark = pytest.mark.integration

# Look-alike ids: prefixes and extensions of each other, so a selector that is too wide shows up.
IDS = ["1", "12", "123", "1234", "21", "012", "112", "2"]
estates = st.dictionaries(st.sampled_from(IDS), st.integers(min_value=0, max_value=3), min_size=1)



@settings(max_examples=150, deadline=None)
@given(estate=estates, doomed=st.sets(st.sampled_from(IDS)))
def test_memory_target_erases_exactly_the_union(estate: dict[str, int], doomed: set[str]) -> None:
    """In-memory records: what remains is the estate minus exactly the erased subjects."""
    MemoryStore.clear()
    MemoryStore.add("p", *({"owner": owner, "n": n} for owner, count in estate.items() for n in range(count)))
    target = MemoryTarget(MemoryConfig(name="p", kind="memory", store="p", match={"owner": "{user_id}"}))
    for subject in doomed:
        target.purge(Subject({"user_id": subject}), lambda done=None: None)
        assert target.verify(Subject({"user_id": subject})) == 0
    remaining = Counter(r["owner"] for r in MemoryStore.records("p"))
    assert remaining == Counter({o: c for o, c in estate.items() if o not in doomed and c})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(estate=estates, doomed=st.sets(st.sampled_from(IDS), max_size=3))
def test_s3_target_erases_exactly_the_union(s3_endpoint: str, estate: dict[str, int], doomed: set[str]) -> None:
    """S3 versions and markers: what remains is the estate minus exactly the erased subjects."""
    bucket = f"prop-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, bucket)
    put_objects(s3_endpoint, bucket, [f"users/{o}/f{n}" for o, c in estate.items() for n in range(c)], versions=2)
    target = S3Target(S3Config(name="p", kind="s3", endpoint_url=s3_endpoint, bucket=bucket,
                               prefix="users/{user_id}/"))
    for subject in doomed:
        target.purge(Subject({"user_id": subject}), lambda done=None: None)
    remaining = versions_per_owner(s3_endpoint, bucket)
    assert remaining == Counter({o: 2 * c for o, c in estate.items() if o not in doomed and c})
