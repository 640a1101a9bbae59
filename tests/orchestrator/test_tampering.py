"""verify-ledger against someone with write access to the database but not the signing key (issue 17 item 12).

Each test makes one honest ledger, tampers with it as an attacker would (raw SQL, hashes recomputed where
that helps them), and checks that ``Ledger.verify`` names the first bad entry or row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from orchestrator.ledger import proof
from orchestrator.ledger.models import AuditCheckpoint, AuditEntry, Hold, Request, SignedHead, Tombstone
from orchestrator.ledger.store import Ledger
from tests.orchestrator.test_proof import erase

pytestmark = pytest.mark.integration
HASH = "ab" * 32


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
    """Requests, holds placed and released, a reconcile's signed head, over HEAD_EVERY entries: intact."""
    for n in range(12):
        erase(ledger, f"h{n}")
    ledger.add_hold([HASH], "litigation hold")
    ledger.release_hold([HASH])
    assert ledger.sign_head()
    assert not ledger.sign_head()  # signed already
    signed, last = ledger.signed_through()
    assert signed == last > proof.HEAD_EVERY
    with ledger.sessions() as s:
        assert s.get(SignedHead, proof.HEAD_EVERY) is not None
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
                       "VALUES (:h, 'r', :at, 'x')"), {"h": "cd" * 32, "at": datetime.now(UTC)})
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
        s.execute(text("INSERT INTO tombstones (subject_hash, request_id, erased_at) VALUES (:h, 'r', :at)"),
                  {"h": "cd" * 32, "at": datetime.now(UTC)})
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
    """A request deleted with its tasks, records and certificate (cascade) while its entries remain."""
    request_id = erase(ledger)
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM requests WHERE id = :id"), {"id": request_id})
    assert ledger.verify() == [f"request {request_id}: removed outside the audit chain"]


def test_forged_checkpoint_hiding_the_oldest_request(ledger: Ledger) -> None:
    """The oldest request and its entries deleted and a checkpoint written so the rest looks like a pruned
    chain: the checkpoint carries no valid signature."""
    oldest = erase(ledger, "1")
    with ledger.sessions() as s:
        cut = s.scalar(select(func.max(AuditEntry.id)))  # the whole first request, its row entry included
        cut_hash = s.scalar(select(AuditEntry.hash).where(AuditEntry.id == cut))
    erase(ledger, "2")
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM audit_log WHERE id <= :cut"), {"cut": cut})
        s.execute(text("DELETE FROM signed_heads WHERE entry_id <= :cut"), {"cut": cut})
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
