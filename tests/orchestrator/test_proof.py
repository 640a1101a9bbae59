"""Proof of erasure: the hash-chained audit log, completion records and signed certificates."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import select, text, update

from orchestrator.certificates import canonical_json, verify
from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, LedgerError
from orchestrator.ledger.models import AuditCheckpoint, AuditEntry, Certificate, CompletionRecord, Request
from tests.fixtures.lethe import file_request

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
  - {name: vectors, kind: memory, store: vectors, match: {owner: "{user_id}"}, after: [photos]}
stores:
  - {name: billing-archive, not_erased: "kept 10 years by tax law (Art. 17(3)(b))"}
"""


def erase(ledger: Ledger, value: str = "4711", dry_run: bool = False) -> str:
    """Run a request through the ledger as workers would, both targets completing."""
    datamap = DataMap.parse(MAP)
    request_id, _, _ = file_request(ledger, datamap, datamap.parse_subject({"user_id": value}), dry_run=dry_run)
    for target, deleted in (("photos", 5), ("vectors", 2)):
        with ledger.sessions() as s:
            from orchestrator.ledger.models import Task

            task = s.scalars(select(Task).filter_by(request_id=request_id, target=target)).one()
        ledger.claim(task.id)
        ledger.complete(task.id, deleted, 0, level="bytes_reclaimed")
    return request_id


def test_intact_ledger_verifies(ledger: Ledger) -> None:
    """After several requests the chain, records and certificates verify with no problem."""
    for value in ("1", "2", "3"):
        erase(ledger, value)
    assert ledger.verify() == []


def test_certificate_has_the_spec_fields_and_verifies_offline(ledger: Ledger) -> None:
    """The certificate carries the SPEC's fields and verifies with only the public key (the README snippet)."""
    request_id = erase(ledger)
    cert = ledger.certificate(request_id)
    assert set(cert) == {"version", "request_id", "scope", "subject_hashes", "regime", "received_at", "due_at",
                         "completed_at", "data_map_digest", "targets", "exemptions", "gone_by", "audit_head",
                         "issued_at", "key_id", "signature"}
    assert cert["request_id"] == request_id and cert["scope"] == "subject"
    assert [(t["target"], t["deleted"], t["residue"], t["level"]) for t in cert["targets"]] == [
        ("photos", 5, 0, "bytes_reclaimed"), ("vectors", 2, 0, "bytes_reclaimed")]
    assert all(t["verified_at"] and t["gone_by"] == t["verified_at"] for t in cert["targets"])  # no copies declared
    assert cert["gone_by"] == max(t["verified_at"] for t in cert["targets"])
    assert cert["exemptions"] == [{"store": "billing-archive", "reason": "kept 10 years by tax law (Art. 17(3)(b))"}]
    assert "4711" not in json.dumps(cert)

    # The five-line offline check, with nothing of lethe's but the public key.
    public = load_pem_public_key(ledger.public_key_pem().encode())
    signature = base64.b64decode(cert["signature"])
    body = json.dumps({k: v for k, v in cert.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()
    public.verify(signature, body)  # type: ignore[union-attr]


def test_edited_certificate_fails_verification(ledger: Ledger) -> None:
    """Changing any field of a certificate breaks its signature, offline and in verify-ledger."""
    request_id = erase(ledger)
    cert = ledger.certificate(request_id)
    forged = {**cert, "targets": [{**cert["targets"][0], "residue": 3}, cert["targets"][1]]}
    assert verify(cert, ledger.signing_key.public_key())
    assert not verify(forged, ledger.signing_key.public_key())
    with ledger.sessions.begin() as s:
        s.get(Certificate, request_id).body = canonical_json(forged).decode()  # type: ignore[union-attr]
    problems = ledger.verify()
    assert problems and problems[0].startswith(f"certificate {request_id}: bad signature")


def test_changed_completion_count_is_detected(ledger: Ledger) -> None:
    """A completion record whose count was edited no longer matches the chain."""
    request_id = erase(ledger)
    with ledger.sessions.begin() as s:
        s.execute(update(CompletionRecord).where(CompletionRecord.target == "photos").values(deleted=50))
    assert ledger.verify()[0] == f"completion record {request_id}/photos: differs from the audit chain"


def test_removed_completion_record_is_detected(ledger: Ledger) -> None:
    """Deleting a completion record is detected."""
    request_id = erase(ledger)
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM completion_records WHERE target = 'vectors'"))
    assert ledger.verify() == [f"completion record {request_id}/vectors: removed"]


def test_edited_audit_entry_is_detected(ledger: Ledger) -> None:
    """Changing an audit entry's detail is named as the first bad entry."""
    erase(ledger)
    with ledger.sessions.begin() as s:
        entry = s.get(AuditEntry, 3)
        assert entry is not None
        entry.detail = {**entry.detail, "tampered": True}
    assert ledger.verify()[0].startswith("audit entry 3 (")
    assert "content was changed" in ledger.verify()[0]


def test_removed_audit_entry_is_detected(ledger: Ledger) -> None:
    """Deleting an audit entry leaves a gap and a broken link."""
    erase(ledger)
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM audit_log WHERE id = 2"))
    first = ledger.verify()[0]
    assert first.startswith("audit entry 3") and "missing" in first


def test_reordered_audit_entries_are_detected(ledger: Ledger) -> None:
    """Swapping two entries' positions breaks the chain at the first of them."""
    erase(ledger)
    with ledger.sessions.begin() as s:
        s.execute(text("UPDATE audit_log SET id = 1000 WHERE id = 2"))
        s.execute(text("UPDATE audit_log SET id = 2 WHERE id = 3"))
        s.execute(text("UPDATE audit_log SET id = 3 WHERE id = 1000"))
    assert ledger.verify()[0].startswith("audit entry 2 (")


def test_dry_run_and_running_requests_have_no_certificate(ledger: Ledger) -> None:
    """A dry run completes without certificate; asking for one is a clear error."""
    request_id = erase(ledger, dry_run=True)
    with pytest.raises(LedgerError, match="dry runs get none"):
        ledger.certificate(request_id)
    assert ledger.verify() == []


def test_concurrent_writers_keep_one_chain(ledger: Ledger) -> None:
    """Many threads filing and completing requests at once leave a single unbroken chain."""
    import threading

    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            erase(ledger, f"c{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledger.verify() == []
    with ledger.sessions() as s:
        ids = list(s.scalars(select(AuditEntry.id).order_by(AuditEntry.id)))
    assert ids == list(range(1, len(ids) + 1))


def test_retention_prunes_old_requests_and_the_chain_still_verifies(ledger: Ledger) -> None:
    """Requests past retention go, a checkpoint keeps the chain verifiable, newer requests stay."""
    old = erase(ledger, "old-1")
    older = erase(ledger, "old-2")
    with ledger.sessions.begin() as s:
        s.execute(update(Request).where(Request.id.in_([old, older]))
                  .values(completed_at=datetime.now(UTC) - timedelta(days=800)))
    kept = erase(ledger, "new")
    assert ledger.prune(730) == 2
    with ledger.sessions() as s:
        assert s.get(Request, old) is None and s.get(Request, kept) is not None
        assert s.get(AuditCheckpoint, 1) is not None
    assert ledger.verify() == []
    assert ledger.certificate(kept)["request_id"] == kept
    erase(ledger, "after-prune")
    assert ledger.verify() == []
    assert ledger.prune(730) == 0
