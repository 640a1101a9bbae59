"""The keys a ledger belongs to (issue 17 item 4): another subject or signing key is refused before anything
is written; the signing key changes only through an audited rotation, and every certificate still verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, text, update

from orchestrator import certificates
from orchestrator.config import Settings
from orchestrator.datamap import DataMap
from orchestrator.keys import KeyMismatch, subject_fingerprint
from orchestrator.ledger import Ledger
from orchestrator.ledger.db import session_factory
from orchestrator.ledger.models import AuditEntry, LedgerIdentity, Request, SigningKey
from tests.fixtures.lethe import SUBJECT_KEY, file_request
from tests.orchestrator.test_proof import MAP, erase

pytestmark = pytest.mark.integration
OTHER_SUBJECT_KEY = "7d" * 32
LETHE = str(Path(sys.executable).with_name("lethe"))


def open_ledger(url: str, subject_key: str, signing_key: Ed25519PrivateKey) -> Ledger:
    return Ledger(Settings(database_url=url).database_url, bytes.fromhex(subject_key), signing_key)


def snapshot(ledger: Ledger) -> tuple[int, int, str | None]:
    with ledger.sessions() as s:
        return (s.scalar(select(func.count()).select_from(AuditEntry)) or 0,
                s.scalar(select(func.count()).select_from(Request)) or 0,
                s.scalar(select(LedgerIdentity.subject_key_fingerprint)))


def test_fingerprint_is_a_keyed_hash_of_a_label_not_of_the_key() -> None:
    key = bytes.fromhex(SUBJECT_KEY)
    import hashlib

    assert subject_fingerprint(key) != subject_fingerprint(bytes.fromhex(OTHER_SUBJECT_KEY))
    assert subject_fingerprint(key) not in (hashlib.sha256(key).hexdigest(), key.hex())


def test_another_subject_key_is_refused_and_nothing_is_written(ledger_url: str, ledger: Ledger,
                                                               signing_key: Ed25519PrivateKey) -> None:
    """A second host with another valid subject key stops at opening the ledger, naming both fingerprints."""
    erase(ledger)
    before = snapshot(ledger)
    with pytest.raises(KeyMismatch) as refused:
        open_ledger(ledger_url, OTHER_SUBJECT_KEY, signing_key)
    message = str(refused.value)
    assert message.startswith("LETHE_SUBJECT_KEY differs from the key this ledger was created with (fingerprint "
                              f"{subject_fingerprint(bytes.fromhex(SUBJECT_KEY))[:16]}")
    assert OTHER_SUBJECT_KEY not in message and SUBJECT_KEY not in message
    assert snapshot(ledger) == before
    open_ledger(ledger_url, SUBJECT_KEY, signing_key).engine.dispose()  # the right key still opens it


def test_another_signing_key_is_refused(ledger_url: str, ledger: Ledger) -> None:
    erase(ledger)
    before = snapshot(ledger)
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(KeyMismatch, match=r"LETHE_SIGNING_KEY \(key_id [0-9a-f]{16}\) is not this ledger's signing "
                                          r"key .*lethe keys rotate --new-key PATH"):
        open_ledger(ledger_url, SUBJECT_KEY, stranger)
    assert snapshot(ledger) == before


def test_second_host_with_another_subject_key_exits_2(ledger_url: str, ledger: Ledger, signing_key_file: Path,
                                                      write_map: Callable[[str], Path]) -> None:
    """`lethe submit` on a host with another LETHE_SUBJECT_KEY: exit 2, one line, no request, no entry."""
    erase(ledger)
    before = snapshot(ledger)
    env = {**os.environ, "LETHE_DATABASE_URL": ledger_url.replace("postgresql+psycopg://", "postgresql://"),
           "LETHE_SUBJECT_KEY": OTHER_SUBJECT_KEY, "LETHE_SIGNING_KEY": str(signing_key_file),
           "LETHE_DATA_MAP": str(write_map(MAP))}
    env.pop("LETHE_BROKER_URL", None)
    for args in (["submit", "--subject", "user_id=12", "--wait"], ["hold", "add", "--subject", "user_id=12",
                                                                   "--reason", "litigation"], ["verify-ledger"]):
        result = subprocess.run([LETHE, *args], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "LETHE_SUBJECT_KEY differs from the key this ledger was created with (fingerprint" in result.stderr
    assert snapshot(ledger) == before


def test_rotation_keeps_every_certificate_verifiable(ledger_url: str, ledger: Ledger,
                                                     signing_key: Ed25519PrivateKey) -> None:
    """Rotate A -> B: the rotation is on the chain, B signs from then on, A is refused, and the certificates
    of both keys verify offline against the published keys and in verify-ledger."""
    old_request = erase(ledger, "1")
    new_key = Ed25519PrivateKey.generate()
    new_id = ledger.rotate_signing_key(new_key, actor="cli:alice")
    assert new_id == certificates.key_id(new_key.public_key())
    new_request = erase(ledger, "2")
    old_cert, new_cert = ledger.certificate(old_request), ledger.certificate(new_request)
    assert old_cert["key_id"] == certificates.key_id(signing_key.public_key()) and new_cert["key_id"] == new_id

    published = ledger.public_key_pem()  # what `lethe certificate --public-key` prints
    assert [line.split()[2] for line in published.splitlines() if line.startswith("# key_id")] == [
        new_id, old_cert["key_id"]]
    public = certificates.parse_public_keys(published)
    assert set(public) == {new_id, old_cert["key_id"]}
    for cert in (old_cert, new_cert):
        assert certificates.verify_certificate(certificates.canonical_json(cert), public) == cert
    assert ledger.verify() == []
    with ledger.sessions() as s:
        rotation = s.scalars(select(AuditEntry).where(AuditEntry.action == "keys.rotated")).one()
    assert rotation.actor == "cli:alice" and rotation.detail["key_id"] == new_id

    with pytest.raises(KeyMismatch, match="was rotated out"):
        open_ledger(ledger_url, SUBJECT_KEY, signing_key)
    reopened = open_ledger(ledger_url, SUBJECT_KEY, new_key)
    assert reopened.verify() == []
    reopened.engine.dispose()


def test_a_key_slipped_into_the_history_is_named(ledger_url: str, ledger: Ledger,
                                                 signing_key: Ed25519PrivateKey) -> None:
    """Someone with write access adds their own key as the next generation (to sign forged heads), or swaps
    the first one: the cross-signatures fail, and hosts with the real key are refused until it is undone."""
    from datetime import UTC, datetime

    erase(ledger)
    intruder = Ed25519PrivateKey.generate()
    intruder_id = certificates.key_id(intruder.public_key())
    with ledger.sessions.begin() as s:
        s.add(SigningKey(generation=2, key_id=intruder_id, public_key=certificates.public_pem(intruder),
                         added_at=datetime.now(UTC), previous_signature="AAAA", own_signature="AAAA"))
    assert ledger.verify()[0] == (f"signing key {intruder_id} (generation 2): not taken through a rotation "
                                  "signed by the key before it")
    with pytest.raises(KeyMismatch):
        open_ledger(ledger_url, SUBJECT_KEY, signing_key)
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM signing_keys WHERE generation = 2"))
        s.execute(update(SigningKey).values(public_key=certificates.public_pem(intruder), key_id=intruder_id))
    assert ledger.verify()[0] == "ledger identity: changed (its signature fails)"


def forget_keys(ledger: Ledger) -> None:
    """The ledger as migration 0006 finds one written before it: no keys, heads or signatures recorded."""
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM signing_keys"))
        s.execute(text("DELETE FROM signed_heads"))
        s.execute(text("UPDATE audit_checkpoint SET key_id = NULL, signature = NULL"))
        s.execute(update(LedgerIdentity).values(subject_key_fingerprint=None, key_id=None, signature=None,
                                                heads_from=select(func.max(AuditEntry.id)).scalar_subquery()))


def test_a_ledger_from_before_0006_adopts_its_keys_once_they_open_its_data(ledger_url: str, ledger: Ledger,
                                                                           signing_key: Ed25519PrivateKey) -> None:
    """The first host after the upgrade records its keys only if they open what is there: a sealed subject
    must unseal, the newest certificate must verify; then its rows and checkpoint are put under proof."""
    ledger.sessions = session_factory(ledger.engine)  # the code before 0006: no row digests on the chain
    erase(ledger, "done")
    datamap = DataMap.parse(MAP)
    running, _, _ = file_request(ledger, datamap, datamap.parse_subject({"user_id": "7"}))  # still sealed
    forget_keys(ledger)
    with pytest.raises(KeyMismatch, match="requests were filed with"):
        open_ledger(ledger_url, OTHER_SUBJECT_KEY, signing_key)
    with pytest.raises(KeyMismatch, match="did not sign this ledger's certificates"):
        open_ledger(ledger_url, SUBJECT_KEY, Ed25519PrivateKey.generate())
    adopted = open_ledger(ledger_url, SUBJECT_KEY, signing_key)
    assert adopted.verify() == []
    with adopted.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "rows.adopted"))
    with adopted.sessions.begin() as s:
        s.execute(update(Request).where(Request.id == running).values(approved_by="someone"))
    assert adopted.verify() == [f"request {running}: changed outside the audit chain"]
    adopted.engine.dispose()

