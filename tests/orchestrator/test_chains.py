"""The audit trail as one chain per request plus the ledger's own (issue 20 item 7).

Writers of different requests must not wait on each other (the global lock this replaces capped the
ledger near 600 tasks/s whatever the worker count), writers of one request must still chain in order, and
verify-ledger must still catch what a database writer without the key can do to whole chains: remove one,
make one up, move an entry from one to another. And a ledger written before the split upgrades intact.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, text

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, appends, proof
from orchestrator.ledger.db import _alembic_config
from orchestrator.ledger.models import AuditEntry, Certificate, Request, Task
from tests.fixtures.lethe import file_request
from tests.orchestrator.test_keys import open_ledger
from tests.orchestrator.test_proof import MAP, erase
from tests.orchestrator.test_tampering import HASH

pytestmark = pytest.mark.integration


def filed(ledger: Ledger, value: str) -> str:
    """A request filed and not started (its deadline can still be extended)."""
    datamap = DataMap.parse(MAP)
    return file_request(ledger, datamap, datamap.parse_subject({"user_id": value}))[0]


@contextmanager
def chain_held_open(ledger: Ledger, request_id: str, meanwhile: Callable[[], object]) -> Iterator[threading.Thread]:
    """A transaction with an entry on the request's chain, open while ``meanwhile`` runs in a thread (started
    and yielded); it commits on leaving, and the thread is then given 20 s to end."""
    with ledger.sessions.begin() as s:
        appends.append(s, "request.noted", request_id, actor="test", detail={"note": "held open"})
        s.flush()
        worker = threading.Thread(target=meanwhile)
        worker.start()
        yield worker
    worker.join(20)


def chain_of(ledger: Ledger, request_id: str) -> list[AuditEntry]:
    with ledger.sessions() as s:
        return list(s.scalars(select(AuditEntry).filter_by(chain=request_id).order_by(AuditEntry.seq)))


def test_each_request_has_its_own_gapless_chain_opened_on_the_ledgers(ledger: Ledger) -> None:
    first, second = erase(ledger, "1"), erase(ledger, "2")
    for request_id in (first, second):
        entries = chain_of(ledger, request_id)
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        assert entries[0].prev_hash == proof.GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
        assert {e.request_id for e in entries} <= {request_id, None}  # row digests name no request
    with ledger.sessions() as s:
        opened = [c for d in s.scalars(select(AuditEntry.detail).filter_by(action=proof.OPENING)) for c in d["chains"]]
    assert opened == [first, second]
    assert ledger.verify() == []


def test_writers_of_different_requests_do_not_wait_for_each_other(pg_ledger: Ledger) -> None:
    """One transaction holds an entry on request A's chain open; a whole operation on request B commits
    meanwhile (before the split it waited for the chain's global lock until A committed)."""
    a, b = filed(pg_ledger, "1"), filed(pg_ledger, "2")
    done = threading.Event()

    def other() -> None:
        pg_ledger.extend_deadline(b, "the regulator agreed")
        done.set()

    with chain_held_open(pg_ledger, a, other):
        assert done.wait(20), "a writer of another request waited for this transaction"
    assert pg_ledger.verify() == []


def test_writers_of_one_request_chain_in_turn(pg_ledger: Ledger) -> None:
    """Two transactions on the same request: the second waits for the first (the request's row is the
    chain's lock) and appends after it, so the chain never forks."""
    request_id = filed(pg_ledger, "1")
    started, done = threading.Event(), threading.Event()

    def second() -> None:
        started.set()
        pg_ledger.extend_deadline(request_id, "the regulator agreed")
        done.set()

    with chain_held_open(pg_ledger, request_id, second):
        started.wait(5)
        assert not done.wait(1.5), "the second writer did not wait for the first"
    assert done.is_set()
    actions = [e.action for e in chain_of(pg_ledger, request_id)]
    assert actions.index("request.noted") < actions.index("request.extended")
    assert pg_ledger.verify() == []


def test_a_whole_chain_removed_with_its_request_is_named(ledger: Ledger) -> None:
    """The attacker removes a request with every row and entry of it: the ledger's chain opened it."""
    gone, kept = erase(ledger, "1"), erase(ledger, "2")
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM signed_heads WHERE entry_id IN (SELECT id FROM audit_log WHERE chain = :c)"),
                  {"c": gone})
        s.execute(text("DELETE FROM audit_log WHERE chain = :c"), {"c": gone})
        s.execute(text("DELETE FROM tombstones WHERE request_id = :c"), {"c": gone})
        s.execute(text("DELETE FROM requests WHERE id = :c"), {"c": gone})
    assert ledger.verify() == [f"request {gone}'s audit chain: removed (the ledger's chain opened it)"]
    assert chain_of(ledger, kept)


def test_a_chain_made_up_outside_lethe_is_named(ledger: Ledger) -> None:
    """A chain with consistent hashes, for a request lethe never filed: no opening names it."""
    erase(ledger, "1")
    fake = "00000000-0000-4000-8000-000000000000"
    with ledger.sessions.begin() as s:
        entry = AuditEntry(chain=fake, seq=1, at=datetime.now(UTC), request_id=fake, task_id=None, actor="admin",
                           action="request.approved", detail={"targets": ["photos"]}, prev_hash=proof.GENESIS_HASH)
        entry.hash = proof.audit_hash(entry)
        s.add(entry)
    assert ledger.verify() == [f"request {fake}'s audit chain: not opened on the ledger's chain (written outside "
                               "lethe)"]


def test_an_entry_moved_to_another_requests_chain_is_named(ledger: Ledger) -> None:
    """An approval moved from one request's chain to the end of another's, its hash recomputed there."""
    first, second = erase(ledger, "1"), erase(ledger, "2")
    with ledger.sessions.begin() as s:
        tip = s.scalars(select(AuditEntry).filter_by(chain=second).order_by(AuditEntry.seq.desc())).first()
        assert tip is not None
        moved = AuditEntry(chain=second, seq=tip.seq + 1, at=tip.at, request_id=first, task_id=None, actor="admin",
                           action="request.approved", detail={"targets": ["photos"]}, prev_hash=tip.hash)
        moved.hash = proof.audit_hash(moved)
        s.add(moved)
        s.flush()
        moved_id = moved.id
    assert ledger.verify() == [f"audit entry {moved_id} (request.approved): names request {first} but is on "
                               f"request {second}'s chain"]


def test_an_entry_removed_from_the_middle_of_a_chain_is_named(ledger: Ledger) -> None:
    request_id = erase(ledger, "1")
    entries = chain_of(ledger, request_id)
    victim = next(e for e in entries if e.action == "task.completed")
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM audit_log WHERE id = :id"), {"id": victim.id})
    after = entries[entries.index(victim) + 1]
    assert ledger.verify()[0] == (f"audit entry {after.id} ({after.action}): entries {victim.seq}..{victim.seq} "
                                  f"of request {request_id}'s chain are missing")


def test_pruning_removes_whole_chains_and_what_is_left_verifies(ledger: Ledger) -> None:
    """An old request's chain goes with the ledger entries before the oldest kept request; the kept one's
    chain, the hold (placed before both) and verify stay intact."""
    ledger.add_hold([HASH], "litigation hold")
    old = erase(ledger, "old")
    with ledger.sessions.begin() as s:  # what time does: the same as lethe writing it 800 days ago
        s.execute(text("UPDATE requests SET completed_at = :at WHERE id = :id"),
                  {"at": "2024-01-01 00:00:00+00:00", "id": old})
    new = erase(ledger, "new")
    assert ledger.prune(730, tombstone_days=10_000) == 1
    assert chain_of(ledger, old) == [] and chain_of(ledger, new)
    with ledger.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Task).filter_by(request_id=old)) == 0
    assert ledger.verify() == []


def test_a_ledger_written_before_the_split_upgrades_intact(pg_database: str, subject_key: bytes,
                                                           signing_key: Ed25519PrivateKey) -> None:
    """One chain of ids (as 0009 left it) becomes the ledger's chain with seq = id: its hashes and heads
    still verify, and new ids continue after the old ones."""
    ledger = Ledger(pg_database, subject_key, signing_key)
    ledger.add_hold([HASH], "litigation hold")  # entries on the ledger's chain only: what 0009 could hold
    ledger.release_hold([HASH])
    ledger.sign_head()
    with ledger.sessions() as s:
        before = [(e.id, e.hash) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    with ledger.engine.connect() as conn:
        command.downgrade(_alembic_config(conn), "0009")
        conn.commit()
        columns: Any = conn.execute(text("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'audit_log'")).scalars().all()
    assert "chain" not in columns and "seq" not in columns
    ledger.engine.dispose()
    upgraded = open_ledger(pg_database, subject_key.hex(), signing_key)
    try:
        with upgraded.sessions() as s:
            assert [(e.id, e.hash) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))] == before
            assert all(e.chain == proof.LEDGER_CHAIN and e.seq == e.id for e in s.scalars(select(AuditEntry)))
        request_id = erase(upgraded, "after")
        assert min(e.id for e in chain_of(upgraded, request_id)) > before[-1][0]
        assert upgraded.verify() == []
    finally:
        upgraded.engine.dispose()


def test_a_chain_cut_back_after_reconcile_recorded_its_tip_is_named(ledger: Ledger) -> None:
    """The whole tail of a certified request (its completion, certificate and their heads) cut off and its
    rows set back: the roll-up reconcile wrote on the ledger's signed chain says how far the chain reached."""
    victim = erase(ledger, "victim")
    erase(ledger, "other")
    assert ledger.sign_head()
    entries = chain_of(ledger, victim)
    cut = next(e for e in entries if e.action == "task.completed").seq
    gone = [e.id for e in entries if e.seq >= cut]
    with ledger.sessions.begin() as s:
        s.execute(text("DELETE FROM signed_heads WHERE entry_id IN (SELECT id FROM audit_log WHERE chain = :c "
                       "AND seq >= :cut)"), {"c": victim, "cut": cut})
        s.execute(text("DELETE FROM audit_log WHERE chain = :c AND seq >= :cut"), {"c": victim, "cut": cut})
    assert gone
    problems = ledger.verify()
    assert problems and any(p.startswith(f"request {victim}'s audit chain: cut back or rewritten behind position")
                            for p in problems)


def test_an_entry_naming_a_request_on_the_ledgers_chain_is_named(ledger: Ledger) -> None:
    """An approval appended to the ledger's chain (hashes consistent) after request chains began: it would
    speak for a request where no head of that request covers it."""
    request_id = erase(ledger, "1")
    with ledger.sessions.begin() as s:
        tip = s.scalars(select(AuditEntry).filter_by(chain=proof.LEDGER_CHAIN).order_by(AuditEntry.seq.desc())).first()
        assert tip is not None
        forged = AuditEntry(chain=proof.LEDGER_CHAIN, seq=tip.seq + 1, at=datetime.now(UTC), request_id=request_id,
                            task_id=None, actor="admin", action="request.approved",
                            detail={"targets": ["photos"], "items": {"photos": 10**9}}, prev_hash=tip.hash)
        forged.hash = proof.audit_hash(forged)
        s.add(forged)
        s.flush()
        forged_id = forged.id
    assert ledger.verify() == [f"audit entry {forged_id} (request.approved): names a request but is on the "
                               "ledger's chain, after request chains began"]


def test_a_writer_that_waited_for_the_requests_row_appends_after_the_one_before(pg_ledger: Ledger) -> None:
    """A retry noted (task row first, then the request's chain) while another transaction holds the
    request's chain: once that one commits, the retry reads the chain's new tip, not the one its first
    statement could see, so it takes the next position instead of colliding with it."""
    request_id = filed(pg_ledger, "1")
    with pg_ledger.sessions() as s:
        task_id = s.scalars(select(Task.id).filter_by(request_id=request_id, target="photos")).one()
    assert pg_ledger.claim(task_id) is not None
    failures: list[BaseException] = []

    def retry() -> None:
        try:
            pg_ledger.note_retry(task_id, "throttled", 1.0)
        except BaseException as exc:
            failures.append(exc)

    with chain_held_open(pg_ledger, request_id, retry) as worker:
        worker.join(1.5)
        assert worker.is_alive(), "the retry did not wait for the request's chain"
    assert failures == []
    actions = [e.action for e in chain_of(pg_ledger, request_id)]
    assert actions.index("request.noted") < actions.index("task.retrying")
    assert pg_ledger.verify() == []


# -- requests in flight across migration 0010 ---------------------------------------------------------------
@contextmanager
def before_the_split(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lethe as it wrote before migration 0010: every entry on the one chain (the ledger's, whose seq is the
    id once the chain has no gaps), no request chain opened."""
    write = appends.append

    def one_chain(s: Any, action: str, request_id: str | None, task_id: str | None = None, actor: str = "worker",
                  detail: dict[str, Any] | None = None, chain: str | None = None) -> AuditEntry:
        return write(s, action, request_id, task_id, actor=actor, detail=detail, chain=proof.LEDGER_CHAIN)

    with monkeypatch.context() as patched:
        patched.setattr(appends, "append", one_chain)
        patched.setattr(appends, "open_chain", lambda s, chain: None)
        yield


def upgraded(ledger: Ledger, pg_database: str, subject_key: bytes, signing_key: Ed25519PrivateKey,
             busy: str | None = None) -> Ledger:
    """The ledger taken back to 0009 (its audit_log as 0009 had it) and opened again, so upgraded; ``busy``:
    a request whose row another transaction holds while the ledger starts."""
    with ledger.sessions() as s:
        assert all(e.chain == proof.LEDGER_CHAIN and e.seq == e.id for e in s.scalars(select(AuditEntry)))
    with ledger.engine.connect() as conn:
        command.downgrade(_alembic_config(conn), "0009")
        conn.commit()
    with ledger.engine.connect() as conn:
        if busy is not None:
            conn.execute(text("SELECT 1 FROM requests WHERE id = :id FOR UPDATE"), {"id": busy})
        started = open_ledger(pg_database, subject_key.hex(), signing_key)
        conn.rollback()
    ledger.engine.dispose()
    return started


def run(ledger: Ledger, request_id: str, *targets: str, claimed: bool = False) -> None:
    """Claim and complete these targets' tasks (``claimed``: the first was claimed already)."""
    for n, target in enumerate(targets):
        with ledger.sessions() as s:
            task_id = s.scalars(select(Task.id).filter_by(request_id=request_id, target=target)).one()
        if not (claimed and n == 0):
            assert ledger.claim(task_id) is not None
        ledger.complete(task_id, 1, 0, level="bytes_reclaimed")


def openings(ledger: Ledger) -> list[tuple[int, list[str]]]:
    with ledger.sessions() as s:
        return [(e.id, e.detail["chains"]) for e in s.scalars(select(AuditEntry).filter_by(
            chain=proof.LEDGER_CHAIN, action=proof.OPENING).order_by(AuditEntry.id))]


def rows_of(ledger: Ledger, request_id: str) -> tuple[str | None, list[str], bool, int]:
    """(status, its tasks' statuses, whether it has a certificate, entries on its chain)."""
    with ledger.sessions() as s:
        status = s.scalar(select(Request.status).filter_by(id=request_id))
        tasks = sorted(s.scalars(select(Task.status).filter_by(request_id=request_id)))
        certified = s.get(Certificate, request_id) is not None
    return status, tasks, certified, len(chain_of(ledger, request_id))


@pytest.mark.parametrize("kept_filed", ["before the upgrade", "after it, the old request busy at the start"])
def test_a_request_in_flight_across_the_split_is_pruned_only_whole(
        pg_database: str, subject_key: bytes, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch,
        kept_filed: str) -> None:
    """A request filed before 0010 and finished after it, while one received after it is still kept: its
    first entries lie in the prefix a prune could take, the opening of its chain after it. The prune takes
    the older requests and keeps this one whole (its row, its chain and the opening naming it) until it can
    take it with its opening; what stays verifies throughout."""
    ledger = Ledger(pg_database, subject_key, signing_key)
    with before_the_split(monkeypatch):
        done = erase(ledger, "done")  # finished before the upgrade: nothing opens its chain
        old = filed(ledger, "old")  # one task claimed: it completes after the upgrade
        with ledger.sessions() as s:
            photos = s.scalars(select(Task.id).filter_by(request_id=old, target="photos")).one()
        assert ledger.claim(photos) is not None
        kept = filed(ledger, "kept") if kept_filed == "before the upgrade" else None
    ledger = upgraded(ledger, pg_database, subject_key, signing_key, busy=None if kept else old)
    try:
        kept = kept or filed(ledger, "kept")
        run(ledger, old, "photos", "vectors", claimed=True)
        assert [c for _, chains in openings(ledger) for c in chains if c == old] == [old]
        before = rows_of(ledger, kept), rows_of(ledger, old)
        assert before[1][:3] == ("completed", ["completed", "completed"], True)
        pruned = ledger.prune(0, tombstone_days=10_000)
        assert ledger.verify() == []
        assert pruned == 1  # the one finished before the other two
        assert rows_of(ledger, done) == (None, [], False, 0)
        assert (rows_of(ledger, kept), rows_of(ledger, old)) == before
        run(ledger, kept, "photos", "vectors")
        assert ledger.prune(0, tombstone_days=10_000) == 2  # now nothing is kept: both go, whole
        assert ledger.verify() == []
        assert rows_of(ledger, old) == rows_of(ledger, kept) == (None, [], False, 0)
    finally:
        ledger.engine.dispose()


def in_flight_across_the_split(pg_database: str, subject_key: bytes, signing_key: Ed25519PrivateKey,
                               monkeypatch: pytest.MonkeyPatch) -> tuple[Ledger, str, str, str, list[str]]:
    """Before 0010: one request finished, one waiting, one on a legal hold; then the upgrade and first start.
    Returns (the upgraded ledger, finished, waiting, held, the held one's subject hashes)."""
    ledger = Ledger(pg_database, subject_key, signing_key)
    with before_the_split(monkeypatch):
        done = erase(ledger, "done")
        waiting, held = filed(ledger, "waiting"), filed(ledger, "held")
        with ledger.sessions() as s:
            hashes = list(s.scalars(select(Request.subject_hashes).filter_by(id=held)).one().values())
        ledger.add_hold(hashes, "litigation hold")
        with ledger.sessions() as s:
            photos = s.scalars(select(Task.id).filter_by(request_id=held, target="photos")).one()
        assert ledger.claim(photos) is None  # held, so on hold
    ledger = upgraded(ledger, pg_database, subject_key, signing_key)
    assert rows_of(ledger, held)[0] == "on_hold"
    return ledger, done, waiting, held, hashes


def test_the_chains_of_requests_in_flight_across_the_split_are_opened_at_the_first_start(
        pg_database: str, subject_key: bytes, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first start after 0010 opens the chain of every request still in flight (one opening, a first
    entry on each chain), before any of them is written again; finished ones are left as they are, and a
    later start writes nothing."""
    ledger, done, waiting, held, _ = in_flight_across_the_split(pg_database, subject_key, signing_key, monkeypatch)
    try:
        ((opening, chains),) = openings(ledger)
        assert chains == sorted([waiting, held])
        for request_id in (waiting, held):
            (first,) = chain_of(ledger, request_id)
            assert first.action == "chain.adopted" and first.id < opening
        assert chain_of(ledger, done) == []
        assert ledger.verify() == []
        with ledger.sessions() as s:
            entries = s.scalar(select(func.count()).select_from(AuditEntry))
        again = open_ledger(pg_database, subject_key.hex(), signing_key)
        again.engine.dispose()
        with ledger.sessions() as s:
            assert s.scalar(select(func.count()).select_from(AuditEntry)) == entries
    finally:
        ledger.engine.dispose()


def test_a_request_held_across_the_split_written_while_its_hold_is_released_does_not_deadlock(
        pg_database: str, subject_key: bytes, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction on the held request's chain (its row locked), while releasing the hold (the ledger's
    chain's lock, then the held requests' rows) waits for it: its commit needs no lock of the ledger's chain
    (opening its chain lazily there took it, and the two deadlocked)."""
    ledger, _, _, held, hashes = in_flight_across_the_split(pg_database, subject_key, signing_key, monkeypatch)
    try:
        failures: list[BaseException] = []

        def release() -> None:
            try:
                ledger.release_hold(hashes)
            except BaseException as exc:
                failures.append(exc)

        with chain_held_open(ledger, held, release) as worker:
            worker.join(1.5)
            assert worker.is_alive(), "releasing the hold did not wait for the held request's row"
        assert failures == [] and not worker.is_alive() and rows_of(ledger, held)[0] != "on_hold"
        assert ledger.verify() == []
        assert [c for _, chains in openings(ledger) for c in chains].count(held) == 1
    finally:
        ledger.engine.dispose()
