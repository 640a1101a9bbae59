"""verify-ledger against someone with write access to the database but not the signing key (issue 17 item 12).

Each test makes one honest ledger, tampers with it as an attacker would (raw SQL, hashes recomputed where
that helps them), and checks that ``Ledger.verify`` names the first bad entry or row.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import bindparam, func, select, text, update

from orchestrator.datamap import DataMap
from orchestrator.keys import KeyMismatch
from orchestrator.ledger import Ledger, proof
from orchestrator.ledger.models import (
    AuditCheckpoint,
    AuditEntry,
    DataMapSnapshot,
    Hold,
    Request,
    SignedHead,
    Task,
    Tombstone,
    UTCDateTime,
)
from tests.fixtures.lethe import SUBJECT_KEY, file_request
from tests.orchestrator.test_keys import forget_keys, open_ledger, snapshot
from tests.orchestrator.test_proof import erase

pytestmark = pytest.mark.integration
HASH = "ab" * 32
# Rows slipped in "outside lethe" bind their time through the ledger's own column type, not sqlite3's
# module-wide datetime adapter (deprecated since Python 3.12, and once seen replaced mid-suite, which
# stored a value the ledger could not read back).
AT = bindparam("at", type_=UTCDateTime())


def last_certificate_entry(ledger: Ledger) -> int:
    with ledger.sessions() as s:
        found = s.scalar(select(func.max(AuditEntry.id)).where(AuditEntry.action == "certificate.issued"))
    assert found is not None
    return found


def rewrite_chain_from(ledger: Ledger, first: int, change: dict[int, dict[str, object]]) -> None:
    """What an attacker without the key can do: edit entries and recompute every hash from ``first`` on."""
    with ledger.sessions.begin() as s:
        entries = list(s.scalars(select(AuditEntry).where(AuditEntry.id >= first).order_by(AuditEntry.id)))
        prev = s.scalar(select(AuditEntry.hash).where(AuditEntry.id == first - 1))
        for entry in entries:
            entry.detail = {**entry.detail, **change.get(entry.id, {})}
            entry.prev_hash = prev
            entry.hash = proof.audit_hash(entry)
            prev = entry.hash


def test_honest_ledger_verifies(ledger: Ledger) -> None:
    """Requests, holds placed and released (over HEAD_EVERY entries on the ledger's chain), a reconcile's
    signed heads: intact, and the HEAD_EVERY-th entry of the ledger's chain is signed."""
    for n in range(12):
        erase(ledger, f"h{n}")
    for _ in range(26):  # 4 entries each on the ledger's chain: hold.added, hold.released and their row entries
        ledger.add_hold([HASH], "litigation hold")
        ledger.release_hold([HASH])
    assert ledger.sign_head()
    assert not ledger.sign_head()  # signed already
    signed, last = ledger.signed_through()
    assert signed == last > proof.HEAD_EVERY
    with ledger.sessions() as s:
        hundredth = s.scalar(select(AuditEntry.id).filter_by(chain=proof.LEDGER_CHAIN, seq=proof.HEAD_EVERY))
        assert hundredth is not None and s.get(SignedHead, hundredth) is not None
        assert s.scalar(select(func.count(func.distinct(AuditEntry.chain)))) == 13  # 12 requests' and the ledger's
    assert ledger.verify() == []


def test_entries_after_the_last_certificate_removed(ledger: Ledger) -> None:
    """A hold placed after the last certificate, then its entries cut off the chain's end: the hold row is
    no longer on the chain (and a head signed by reconcile names the cut)."""
    erase(ledger)
    with ledger.sessions() as s:
        cut = s.scalar(select(func.max(AuditEntry.id)))  # the certificate's transaction ends the chain
    ledger.add_hold([HASH], "litigation hold")
    ledger.sign_head()
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM audit_log WHERE id > :cut"), {"cut": cut})
    problems = ledger.verify()
    assert problems[0].endswith("removed (a signed head covers it)")
    with ledger.sessions.begin() as s:  # the attacker removes the heads too: the hold still shows
        s.execute(text("DELETE FROM signed_heads WHERE entry_id > :cut"), {"cut": cut})
    assert ledger.verify()[0] == "hold 1: not in the audit chain (written outside lethe)"


def test_chain_rewritten_with_recomputed_hashes(ledger: Ledger) -> None:
    """A completion count lowered in the chain and every later hash recomputed: the consistent chain no
    longer matches the head signed at the certificate."""
    erase(ledger, "1")
    first = last_certificate_entry(ledger) + 1
    erase(ledger, "2")
    with ledger.sessions() as s:
        completed = s.scalar(select(AuditEntry.id).where(AuditEntry.id >= first, AuditEntry.action == "task.completed"))
    assert completed is not None
    rewrite_chain_from(ledger, completed, {completed: {"note": "rewritten"}})
    problems = ledger.verify()
    certificate_entry = last_certificate_entry(ledger)
    assert problems[0] == (f"audit entry {certificate_entry} (certificate.issued): not the entry its signed head "
                           "covers: the chain up to it was rewritten")
    with ledger.sessions.begin() as s:  # removing the head does not help
        s.execute(text("DELETE FROM signed_heads WHERE entry_id >= :first"), {"first": first})
    assert ledger.verify()[0] == (f"audit entry {certificate_entry} (certificate.issued): its signed head was removed "
                                  "(the chain may have been rewritten)")


@pytest.mark.parametrize("column, value", [("until", datetime(2000, 1, 1, tzinfo=UTC)), ("reason", "x"),
                                           ("released_at", datetime(2030, 1, 1, tzinfo=UTC))])
def test_edited_hold(ledger: Ledger, column: str, value: object) -> None:
    """A hold shortened, reworded or marked released in the table, outside lethe, is named."""
    erase(ledger)
    ledger.add_hold([HASH], "litigation hold")
    with ledger.sessions.begin() as s:
        s.execute(update(Hold).values({column: value}))
    assert ledger.verify() == ["hold 1: changed outside the audit chain"]


def test_removed_and_inserted_holds(ledger: Ledger) -> None:
    """A hold deleted (its subject would then be erased) or one slipped in is named."""
    ledger.add_hold([HASH], "litigation hold")
    with ledger.sessions.begin() as s:
        s.execute(text("INSERT INTO holds (subject_hash, reason, created_at, created_by) "
                       "VALUES (:h, 'r', :at, 'x')").bindparams(AT), {"h": "cd" * 32, "at": datetime.now(UTC)})
        s.execute(text("DELETE FROM holds WHERE id = 1"))
    assert ledger.verify() == ["hold 2: not in the audit chain (written outside lethe)",
                               "hold 1: removed outside the audit chain"]


def test_edited_removed_and_inserted_tombstones(ledger: Ledger) -> None:
    """Tombstones decide what a later data_written erases: each change outside lethe is named."""
    erase(ledger, "1")
    erase(ledger, "2")
    with ledger.sessions() as s:
        first, second = sorted(s.scalars(select(Tombstone.id)))
    with ledger.sessions.begin() as s:
        s.execute(update(Tombstone).where(Tombstone.id == first).values(subject_hash=HASH))
        s.execute(text("INSERT INTO tombstones (subject_hash, request_id, erased_at) "
                       "VALUES (:h, 'r', :at)").bindparams(AT), {"h": "cd" * 32, "at": datetime.now(UTC)})
        s.execute(text("DELETE FROM tombstones WHERE id = :id"), {"id": second})
    assert ledger.verify() == [f"tombstone {first}: changed outside the audit chain",
                               f"tombstone {second + 1}: not in the audit chain (written outside lethe)",
                               f"tombstone {second}: removed outside the audit chain"]


@pytest.mark.parametrize("values", [{"subject_hashes": {"user_id": HASH}}, {"approved_by": "admin"},
                                    {"status": "cancelled"}, {"dry_run": True}])
def test_edited_request_row(ledger: Ledger, values: dict[str, object]) -> None:
    """A request's hashes (a hold would no longer match), approval (no blast-radius count), status or dry
    run flag edited in the table is named."""
    request_id = erase(ledger)
    with ledger.sessions.begin() as s:
        s.execute(update(Request).values(values))
    assert ledger.verify() == [f"request {request_id}: changed outside the audit chain"]


def test_removed_request_is_named(ledger: Ledger) -> None:
    """A request deleted with its tasks, records and certificate (cascade) while its entries remain: the
    request is named first, then each of its tasks."""
    request_id = erase(ledger)
    with ledger.sessions() as s:
        task_ids = sorted(s.scalars(select(Task.id).filter_by(request_id=request_id)))
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM requests WHERE id = :id"), {"id": request_id})
    problems = ledger.verify()
    assert problems[0] == f"request {request_id}: removed outside the audit chain"
    assert sorted(problems[1:]) == [f"task {t}: removed outside the audit chain" for t in task_ids]


def test_forged_checkpoint_hiding_the_oldest_request(ledger: Ledger) -> None:
    """The oldest request and its entries deleted and a checkpoint written so the rest looks like a pruned
    chain: the checkpoint carries no valid signature."""
    oldest = erase(ledger, "1")
    with ledger.sessions() as s:  # the ledger's chain up to the first request's opening, and its chain
        cut = s.scalar(select(func.max(AuditEntry.seq)).filter_by(chain=proof.LEDGER_CHAIN))
        cut_hash = s.scalar(select(AuditEntry.hash).filter_by(chain=proof.LEDGER_CHAIN, seq=cut))
    erase(ledger, "2")
    with ledger.sessions.begin() as s:
        gone = "(chain = 'ledger' AND seq <= :cut) OR chain = :id"
        s.execute(text(f"DELETE FROM signed_heads WHERE entry_id IN (SELECT id FROM audit_log WHERE {gone})"),
                  {"cut": cut, "id": oldest})
        s.execute(text(f"DELETE FROM audit_log WHERE {gone}"), {"cut": cut, "id": oldest})
        s.execute(text("DELETE FROM tombstones WHERE request_id = :id"), {"id": oldest})
        s.execute(text("DELETE FROM requests WHERE id = :id"), {"id": oldest})
        s.add(AuditCheckpoint(id=1, last_pruned_id=cut, last_pruned_hash=cut_hash, pruned_at=datetime.now(UTC)))
    assert ledger.verify() == [f"audit checkpoint (entries 1..{cut} pruned): not signed by the ledger's key: "
                               "forged or changed, so the oldest entries may have been removed"]


def test_pruned_ledger_still_verifies_and_its_checkpoint_is_signed(ledger: Ledger) -> None:
    """Retention and tombstone expiry remove rows and entries honestly: verify stays clean, a hold placed
    before the pruned entries is still protected, and the checkpoint cannot be moved."""
    ledger.add_hold([HASH], "litigation hold")
    old = erase(ledger, "old")
    with ledger.sessions.begin() as s:  # what time does: the same as lethe writing it 800 days ago
        request = s.get(Request, old)
        assert request is not None
        request.completed_at = datetime.now(UTC) - timedelta(days=800)
    erase(ledger, "new")
    assert ledger.prune(730, tombstone_days=0) == 1
    with ledger.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Tombstone)) == 0
        assert s.get(AuditCheckpoint, 1).signature  # type: ignore[union-attr]
    assert ledger.verify() == []
    with ledger.sessions.begin() as s:
        s.execute(update(Hold).values(reason="edited after the prune"))
    assert ledger.verify() == ["hold 1: changed outside the audit chain"]
    with ledger.sessions.begin() as s:
        s.execute(update(Hold).values(reason="litigation hold"))
        s.execute(update(AuditCheckpoint).values(last_pruned_id=AuditCheckpoint.last_pruned_id + 1))
    assert ledger.verify()[0].startswith("audit checkpoint")


@pytest.mark.parametrize("edit", [
    update(Hold).values(released_at=datetime(2030, 1, 1, tzinfo=UTC), released_by="admin"),
    update(Request).values(approved_by="admin"),
    update(Request).values(subject_hashes={"user_id": HASH}),
], ids=["hold released", "approved_by", "subject_hashes"])
def test_identity_cleared_to_launder_a_row_edit_is_refused(ledger_url: str, ledger: Ledger,
                                                           signing_key: Ed25519PrivateKey, edit: Any) -> None:
    """A row edited and the identity's fingerprint cleared, so the next host would take the ledger for one
    from before 0006 and adopt the edited rows as honest: the host refuses to open it (exit 2), writes
    nothing, and verify keeps naming the edit."""
    request_id = erase(ledger)
    ledger.add_hold([HASH], "litigation hold")
    with ledger.sessions.begin() as s:
        s.execute(edit)
        s.execute(text("UPDATE ledger_identity SET subject_key_fingerprint = NULL"))
    problems = ledger.verify()
    edited = "hold 1" if "holds" in str(edit) else f"request {request_id}"
    assert problems == ["ledger identity: its subject key fingerprint was removed (hosts refuse to open it)",
                        f"{edited}: changed outside the audit chain"]
    before = snapshot(ledger)
    with pytest.raises(KeyMismatch, match=r"^ledger identity tampered: its subject key fingerprint removed, but "
                                          r"the ledger has recorded signing keys"):
        open_ledger(ledger_url, SUBJECT_KEY, signing_key)
    assert snapshot(ledger) == before
    assert ledger.verify() == problems


def test_identity_keys_and_heads_cleared_are_refused(ledger_url: str, ledger: Ledger,
                                                     signing_key: Ed25519PrivateKey) -> None:
    """The attacker also removes the signing keys and signed heads and moves heads_from past the chain: the
    row digests on the chain still show proof was kept, so nothing is adopted or re-signed."""
    erase(ledger)
    ledger.add_hold([HASH], "litigation hold")
    with ledger.sessions.begin() as s:
        s.execute(update(Hold).values(released_at=datetime(2030, 1, 1, tzinfo=UTC), released_by="admin"))
    forget_keys(ledger)
    with ledger.sessions.begin() as s:
        s.execute(text("UPDATE ledger_identity SET heads_from = 1000000"))
    before = snapshot(ledger)
    with pytest.raises(KeyMismatch, match=r"^ledger identity tampered: .* has row digests on its audit chain"):
        open_ledger(ledger_url, SUBJECT_KEY, signing_key)
    assert snapshot(ledger) == before
    assert "hold 1: changed outside the audit chain" in ledger.verify()


def test_edit_laundered_by_a_later_honest_change_is_named(ledger: Ledger) -> None:
    """A hold reworded in the table, then released through lethe: the release starts from a row the chain
    never recorded, and verify says so (the release's digest alone would cover the edit)."""
    ledger.add_hold([HASH], "litigation hold")
    with ledger.sessions.begin() as s:
        s.execute(update(Hold).values(reason="edited"))
    ledger.release_hold([HASH])
    problems = ledger.verify()
    assert len(problems) == 1 and problems[0].startswith("hold 1: changed outside the audit chain (before audit entry")


LIMITED_MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}, max_items: 10}
"""


def file_limited(ledger: Ledger) -> tuple[str, str]:
    datamap = DataMap.parse(LIMITED_MAP)
    request_id, _, _ = file_request(ledger, datamap, datamap.parse_subject({"user_id": "4711"}))
    with ledger.sessions() as s:
        task_id = s.scalars(select(Task.id).filter_by(request_id=request_id, target="photos")).one()
    return request_id, task_id


@pytest.mark.parametrize("column", ["approved_items", "counted_items"])
def test_task_approval_written_in_the_table(ledger: Ledger, column: str) -> None:
    """A target with max_items 10 and an approval written into the task's row: the chain holds no approval
    (what the claim must read), and once 5000 items are deleted verify names the edited task and the
    completion over the limit."""
    request_id, task_id = file_limited(ledger)
    with ledger.sessions.begin() as s:
        s.execute(update(Task).where(Task.id == task_id).values({column: 1_000_000_000}))
    with ledger.sessions() as s:
        task = s.get(Task, task_id)
        assert task is not None and proof.approved_count(s, task) is None
    ledger.claim(task_id)
    ledger.complete(task_id, 5000, 0)
    with ledger.sessions() as s:
        assert s.scalar(select(Request.approved_by)) is None
    problems = ledger.verify()
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"task {task_id}: changed outside the audit chain (before audit entry ")
    assert re.fullmatch(rf"completion record {request_id}/photos: 5000 items deleted, over max_items 10, with no "
                        r"approval on the audit chain \(audit entry \d+\)", problems[1])


def test_approved_purge_over_max_items_verifies(ledger: Ledger) -> None:
    """The honest path: the count waits, an admin approves it, the purge runs; the chain's approval is what
    the claim reads, and verify is clean."""
    request_id, task_id = file_limited(ledger)
    assert ledger.claim(task_id) is not None
    ledger.await_approval(task_id, 5000, 10)
    ledger.approve(request_id, actor="cli:alice")
    run = ledger.claim(task_id)
    assert run is not None and run.approval_covers(5000) and not run.approval_covers(5001)
    with ledger.sessions() as s:
        task = s.get(Task, task_id)
        assert task is not None and proof.approved_count(s, task) == 5000
    ledger.complete(task_id, 5000, 0)
    assert ledger.status(request_id)["status"] == "completed"
    assert ledger.verify() == []


def test_rewritten_data_map_is_named(ledger: Ledger) -> None:
    """A stored map's text replaced by another map (its tasks would run against it): named by its digest."""
    erase(ledger)
    with ledger.sessions() as s:
        digest = s.scalars(select(DataMapSnapshot.digest)).one()
    with ledger.sessions.begin() as s:
        s.execute(update(DataMapSnapshot).values(text=LIMITED_MAP))
    assert ledger.verify() == [f"data map {digest[:12]}: its text was changed (it no longer has this digest)"]
