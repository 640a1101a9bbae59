"""The planner: one task per target, in the map's topological order, with deterministic ids."""

from __future__ import annotations

import textwrap
import uuid

import pytest

from orchestrator.datamap import DataMap
from orchestrator.planner import TASK_NAMESPACE, PlannedTask, plan, task_id

MAP = textwrap.dedent("""\
    version: 1
    identifiers: [user_id, email]
    targets:
      - name: models
        kind: memory
        store: models
        match: {owner: "{user_id}"}
        after: [photos, embeddings]
        max_items: 20
      - name: photos
        kind: s3
        bucket: photos
        prefix: "users/{user_id}/"
      - name: newsletter
        kind: memory
        store: mail
        match: {address: "{email}"}
      - name: embeddings
        kind: memory
        store: vectors
        match: {subject_id: "{user_id}"}
        after: [photos]
      - name: uploads
        kind: s3
        bucket: uploads
        keys_query:
          url: sqlite://
          sql: "SELECT k FROM uploads WHERE owner = :user_id AND mail = :email"
    """)


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return DataMap.parse(MAP)


def test_one_task_per_target_in_topological_order(datamap: DataMap) -> None:
    """plan() returns exactly one task per target, in the data map's topological order, positions 0..n-1."""
    tasks = plan("req-1", datamap, datamap.parse_subject({"user_id": "12", "email": "a@b.c"}))
    assert [t.target for t in tasks] == [t.name for t in datamap.targets]
    assert len({t.target for t in tasks}) == 5
    assert [t.position for t in tasks] == list(range(5))
    position = {t.target: t.position for t in tasks}
    for t in tasks:
        for dep in t.after:
            assert position[dep] < t.position


def test_tasks_carry_kind_and_after(datamap: DataMap) -> None:
    """Each task keeps its target's kind and its `after` list unchanged."""
    tasks = {t.target: t for t in plan("req-1", datamap, datamap.parse_subject({"user_id": "12"}))}
    assert tasks["models"].kind == "memory"
    assert tasks["photos"].kind == "s3"
    assert tasks["models"].after == ("photos", "embeddings")
    assert tasks["embeddings"].after == ("photos",)
    assert tasks["photos"].after == ()


def test_all_tasks_pending_when_subject_has_every_identifier(datamap: DataMap) -> None:
    """With every identifier present, every task is pending with no reason."""
    tasks = plan("req-1", datamap, datamap.parse_subject({"user_id": "12", "email": "a@b.c"}))
    assert all(t.status == "pending" for t in tasks)
    assert all(t.reason is None for t in tasks)


def test_ids_are_deterministic(datamap: DataMap) -> None:
    """The same request and target give the same task id on every call, whatever the subject's values."""
    first = plan("req-1", datamap, datamap.parse_subject({"user_id": "12"}))
    second = plan("req-1", datamap, datamap.parse_subject({"user_id": "99", "email": "x@y.z"}))
    assert [t.id for t in first] == [t.id for t in second]


def test_ids_are_uuid5_of_request_and_target(datamap: DataMap) -> None:
    """A task id is uuid5(TASK_NAMESPACE, "<request id>/<target>")."""
    tasks = plan("req-1", datamap, datamap.parse_subject({"user_id": "12"}))
    for t in tasks:
        assert t.id == str(uuid.uuid5(TASK_NAMESPACE, f"req-1/{t.target}"))
        assert t.id == task_id("req-1", t.target)
        assert uuid.UUID(t.id).version == 5


def test_ids_differ_across_requests_and_targets(datamap: DataMap) -> None:
    """Ids are unique per target within a request and differ between requests."""
    subject = datamap.parse_subject({"user_id": "12"})
    a = plan("req-1", datamap, subject)
    b = plan("req-2", datamap, subject)
    assert len({t.id for t in a}) == len(a)
    assert {t.id for t in a}.isdisjoint({t.id for t in b})


def test_target_missing_placeholder_identifier_is_skipped(datamap: DataMap) -> None:
    """A target templated on email is skipped, its reason naming email, when the subject has only user_id."""
    tasks = {t.target: t for t in plan("req-1", datamap, datamap.parse_subject({"user_id": "12"}))}
    newsletter = tasks["newsletter"]
    assert newsletter.status == "skipped"
    assert newsletter.reason is not None
    assert "email" in newsletter.reason
    assert "not erased" in newsletter.reason
    assert "user_id" not in newsletter.reason
    for name in ("models", "photos", "embeddings"):
        assert tasks[name].status == "pending"
        assert tasks[name].reason is None


def test_keys_query_param_missing_skips_target(datamap: DataMap) -> None:
    """A keys_query :param the subject lacks skips that target too, naming the missing identifier."""
    tasks = {t.target: t for t in plan("req-1", datamap, datamap.parse_subject({"user_id": "12"}))}
    assert tasks["uploads"].status == "skipped"
    assert tasks["uploads"].reason is not None
    assert "email" in tasks["uploads"].reason


def test_skip_reason_names_every_missing_identifier(datamap: DataMap) -> None:
    """With only email, user_id targets are skipped naming user_id; uploads names user_id, not email."""
    tasks = {t.target: t for t in plan("req-1", datamap, datamap.parse_subject({"email": "a@b.c"}))}
    assert tasks["newsletter"].status == "pending"
    for name in ("models", "photos", "embeddings", "uploads"):
        assert tasks[name].status == "skipped"
        assert tasks[name].reason is not None
        assert "user_id" in tasks[name].reason
        assert "email" not in tasks[name].reason


def test_skipped_tasks_keep_their_place_and_id(datamap: DataMap) -> None:
    """A skipped task is still planned, with the same id and position as when it runs."""
    full = plan("req-1", datamap, datamap.parse_subject({"user_id": "12", "email": "a@b.c"}))
    partial = plan("req-1", datamap, datamap.parse_subject({"user_id": "12"}))
    assert [(t.id, t.target, t.position) for t in full] == [(t.id, t.target, t.position) for t in partial]


def test_plan_never_contains_identifier_values(datamap: DataMap) -> None:
    """Planned tasks hold kinds and target names, never the subject's values."""
    tasks = plan("req-1", datamap, datamap.parse_subject({"user_id": "Qx7Zsecret", "email": "Qx7Z@b.c"}))
    assert "Qx7Z" not in repr(tasks)


def test_planned_task_is_immutable() -> None:
    """PlannedTask is frozen, so a plan cannot be altered after it is made."""
    task = PlannedTask(id="x", target="t", kind="memory", position=0, after=(), status="pending")
    with pytest.raises(AttributeError):
        task.status = "skipped"  # type: ignore[misc]
