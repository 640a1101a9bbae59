"""End to end: a version written between a task's count and its purge is erased by a retry, never certified
away (the purge deletes what the count listed; verify lists afresh; see workers/targets/s3.py)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.testing import put_objects, version_keys, versions_per_owner
from tests.integration.test_pipeline import USERS, pipeline, running  # noqa: F401 (fixtures)
from workers.targets.s3 import S3Target

pytestmark = pytest.mark.integration


def test_a_version_written_after_the_count_is_erased_by_the_retry(running, s3_endpoint: str,  # noqa: F811
                                                                 bucket: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    lethe = running()
    before = versions_per_owner(s3_endpoint, bucket)
    purge = S3Target.purge
    written: list[str] = []

    def purge_after_a_late_write(self: S3Target, subject: Any, heartbeat: Any) -> int:
        if not written:  # the first attempt only: the application writes once, after the count
            written.append("users/12/late.jpg")
            put_objects(s3_endpoint, bucket, written)
        return purge(self, subject, heartbeat)

    monkeypatch.setattr(S3Target, "purge", purge_after_a_late_write)
    request_id, _ = lethe.submit({"user_id": "12"})
    status = lethe.wait(request_id, timeout=60)
    assert status["status"] == "completed", status
    photos = next(t for t in status["tasks"] if t["target"] == "profile-photos")
    assert photos["attempts"] == 2 and photos["residue"] == 0  # verify read the late version back: retried
    assert photos["deleted"] == 1  # the completion is the verified attempt's; the first deleted the rest
    assert written and version_keys(s3_endpoint, bucket, "users/12/") == []
    after = versions_per_owner(s3_endpoint, bucket)
    assert {u: after[u] for u in USERS if u != "12"} == {u: before[u] for u in USERS if u != "12"}
    assert lethe.ledger.completion_record_count(request_id) == 2
    actions = [e["action"] for e in lethe.ledger.audit_trail(request_id)]
    assert actions.count("task.retrying") == 1
