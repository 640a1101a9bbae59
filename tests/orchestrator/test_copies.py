"""Copies in the data map (issue 22 part 1): replicas expanded into targets of their own, backups and the
retention rule, and ``gone_by`` dated in certificates and status objects."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from orchestrator import certificates
from orchestrator.certificates import CertificateError, canonical_json, verify_certificate
from orchestrator.copies import Copy, gone_by
from orchestrator.datamap import DataMap, DataMapError
from orchestrator.ledger import Ledger, snapshots
from orchestrator.ledger.models import CompletionRecord, Task
from orchestrator.service import Lethe
from tests.fixtures.lethe import file_request

LETHE = str(Path(sys.executable).with_name("lethe"))
MAP = """
version: 1
identifiers: {user_id: "[0-9]+"}
targets:
  - name: photos
    kind: memory
    store: photos
    match: {owner: "{user_id}"}
    max_items: 50
    replicas:
      - {store: photos-eu}
      - {store: photos-us, name: photos-us, max_items: 7}
    backups: {retention_days: 35, note: "AWS Backup, continuous"}
  - name: sessions
    kind: memory
    store: sessions
    match: {owner: "{user_id}"}
    after: [photos]
datasets:
  imports: {photos: {match: {batch: "2024"}}}
"""


def parse(text: str) -> DataMap:
    return DataMap.parse(textwrap.dedent(text))


def problems(text: str) -> list[str]:
    with pytest.raises(DataMapError) as info:
        parse(text)
    return info.value.errors


def one_target(entry: str) -> str:
    return f"version: 1\nidentifiers: [user_id]\ntargets:\n{textwrap.indent(textwrap.dedent(entry), '  ')}"


PHOTOS = """\
- name: photos
  kind: memory
  store: photos
  match: {owner: "{user_id}"}
"""


# -- the map -----------------------------------------------------------------------------------------------
def test_replicas_become_targets_that_inherit_the_primary_and_its_place() -> None:
    datamap = DataMap.parse(MAP)
    by_name = {t.name: t for t in datamap.targets}
    assert list(by_name) == ["photos", "photos.replica-1", "photos-us", "sessions"]
    eu, us = by_name["photos.replica-1"], by_name["photos-us"]
    assert (eu.replica_of, eu.store, eu.match, eu.max_items) == ("photos", "photos-eu", {"owner": "{user_id}"}, 50)
    assert (us.replica_of, us.store, us.max_items) == ("photos", "photos-us", 7)
    assert eu.backups is None and by_name["photos"].backups.retention_days == 35  # type: ignore[union-attr]
    assert by_name["photos"].replica_of is None
    assert by_name["sessions"].after == ("photos", "photos.replica-1", "photos-us")  # waits for every copy
    assert datamap.replicas_of("photos") == ("photos.replica-1", "photos-us")
    assert datamap.datasets["imports"] == {name: {"match": {"batch": "2024"}}
                                           for name in ("photos.replica-1", "photos-us", "photos")}


def test_a_replica_waits_for_what_its_primary_waits_for() -> None:
    datamap = parse(one_target(PHOTOS) + textwrap.indent(textwrap.dedent("""\
        - name: models
          kind: memory
          store: models
          match: {owner: "{user_id}"}
          after: [photos]
          replicas: [{store: models-eu}]
        """), "  "))
    assert datamap.target("models.replica-1").after == ("photos",)
    assert [t.name for t in datamap.targets].index("models.replica-1") > 0


def test_follow_ups_of_a_primary_reach_its_replicas() -> None:
    from orchestrator.planner import plan

    datamap = DataMap.parse(MAP)
    tasks = plan("r", datamap, datamap.parse_subject({"user_id": "12"}), only=["photos"])
    assert sorted(t.target for t in tasks) == ["photos", "photos-us", "photos.replica-1"]
    only_replica = plan("r", datamap, datamap.parse_subject({"user_id": "12"}), only=["photos-us"])
    assert [t.target for t in only_replica] == ["photos-us"]


@pytest.mark.parametrize(("replicas", "expected"), [
    ("{store: photos-eu}", "replicas must be a list"),
    ("[photos-eu]", "replicas[0] must be a non-empty mapping"),
    ("[{}]", "replicas[0] must be a non-empty mapping"),
    ("[{kind: s3}]", "replicas[0]: kind cannot be set on a replica"),
    ("[{replicas: [{store: x}]}]", "replicas[0]: replicas cannot be set on a replica"),
    ("[{replica_of: other}]", "replicas[0]: replica_of cannot be set on a replica"),
    ("[{stor: photos-eu}]", "target 'photos.replica-1' (replica of 'photos'): stor: Extra inputs"),
    ("[{match: {owner: everyone}}]", "target 'photos.replica-1' (replica of 'photos'): match: Value error"),
    ("[{store: a, name: photos}]", "target 'photos' (replica of 'photos'): duplicate target name"),
    ("[{store: a, name: twin}, {store: b, name: twin}]", "target 'twin' (replica of 'photos'): duplicate"),
    ("[{store: a, name: 'bad name'}]", "target 'bad name' (replica of 'photos'): name: String should match"),
    ("[{store: a, backups: {retention_days: 0}}]", "backups.retention_days: Input should be greater than"),
])
def test_bad_replicas_are_named_errors(replicas: str, expected: str) -> None:
    errors = problems(one_target(PHOTOS + f"  replicas: {replicas}\n"))
    assert any(expected in e for e in errors), errors


def test_a_replica_name_may_not_clash_with_another_target() -> None:
    errors = problems(one_target(PHOTOS + "  replicas: [{store: a}]\n" + textwrap.dedent("""\
        - {name: photos.replica-1, kind: memory, store: b, match: {owner: "{user_id}"}}
        """)))
    assert errors == ["target 'photos.replica-1': duplicate target name"]


def test_a_bad_primary_is_reported_once_not_again_for_each_replica() -> None:
    errors = problems(one_target(PHOTOS.replace('{owner: "{user_id}"}', "{owner: everyone}")
                                 + "  replicas: [{store: a}, {store: b}]\n"))
    assert len(errors) == 1 and errors[0].startswith("target 'photos': match: Value error"), errors


def test_a_long_primary_name_needs_named_replicas() -> None:
    long = "p" * 60
    errors = problems(one_target(PHOTOS.replace("name: photos", f"name: {long}") + "  replicas: [{store: a}]\n"))
    assert errors == [f"target '{long}.replica-1' (replica of '{long}'): name: String should match pattern "
                      "'^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'"]


def test_replica_of_is_never_written_by_hand() -> None:
    errors = problems(one_target(PHOTOS + "  replica_of: sessions\n"))
    assert errors == ["target 'photos': replica_of is not written by hand: declare the copy under its "
                      "primary's replicas: and lethe records which primary it mirrors"]


@pytest.mark.parametrize(("backups", "expected"), [
    ("{retention_days: 0}", "backups.retention_days: Input should be greater than or equal to 1"),
    ("{retention_days: '35'}", "backups.retention_days: Input should be a valid integer"),
    ("{retention_days: 3.5}", "backups.retention_days: Input should be a valid integer"),
    ("{note: nightly}", "backups.retention_days: Field required"),
    ("{retention_days: 35, keep: forever}", "backups.keep: Extra inputs are not permitted"),
    ("35", "backups: Input should be a valid dictionary"),
])
def test_bad_backups_are_named_errors(backups: str, expected: str) -> None:
    errors = problems(one_target(PHOTOS + f"  backups: {backups}\n"))
    assert len(errors) == 1 and errors[0].startswith(f"target 'photos': {expected}"), errors


def test_the_ledger_reads_the_same_copies_from_the_stored_text() -> None:
    """The ledger parses no map: it expands a stored map's replicas with the same rule, for gone_by and for
    the blast radius verify-ledger checks on every completion (a replica's own, or its primary's)."""
    datamap = DataMap.parse(MAP)
    assert snapshots.max_items(MAP) == {"photos": 50, "photos.replica-1": 50, "photos-us": 7, "sessions": 100_000}
    assert dict(snapshots.copies(MAP)) == {t.name: Copy(t.replica_of, t.backups.retention_days if t.backups else None)
                                           for t in datamap.targets}


def test_a_retention_longer_than_the_tombstones_is_refused() -> None:
    datamap = DataMap.parse(MAP)
    assert datamap.check_retention(35) is datamap
    with pytest.raises(DataMapError) as info:
        datamap.check_retention(30, "m.yaml")
    assert info.value.errors == [
        "target 'photos': backups retention_days 35 exceeds LETHE_TOMBSTONE_DAYS (30): a restore of that backup "
        "could not be erased again once the tombstones are gone; raise LETHE_TOMBSTONE_DAYS or shorten the "
        "retention"]


def test_the_service_and_check_map_refuse_it(tmp_path: Path, make_lethe: Callable[..., Lethe]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MAP)
    assert make_lethe(data_map=path, tombstone_days=35).load_map().digest
    with pytest.raises(DataMapError, match="retention_days 35 exceeds LETHE_TOMBSTONE_DAYS"):
        make_lethe(data_map=path, tombstone_days=30).load_map()
    env = {**os.environ, "LETHE_TOMBSTONE_DAYS": "30"}
    refused = subprocess.run([LETHE, "check-map", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert [line for line in refused.stderr.splitlines() if "retention" in line] == [
        "  - target 'photos': backups retention_days 35 exceeds LETHE_TOMBSTONE_DAYS (30): a restore of that "
        "backup could not be erased again once the tombstones are gone; raise LETHE_TOMBSTONE_DAYS or shorten "
        "the retention"]
    ok = subprocess.run([LETHE, "check-map", str(path)], env={**env, "LETHE_TOMBSTONE_DAYS": "90"},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "replica of photos" in ok.stdout and "backups 35 d" in ok.stdout


OVERRIDE = st.dictionaries(st.sampled_from(["store", "name", "match", "kind", "after", "max_items", "backups",
                                            "replicas", "replica_of", "x"]),
                           st.none() | st.integers(-2, 40) | st.text(max_size=8)
                           | st.dictionaries(st.sampled_from(["owner", "retention_days", "note"]),
                                             st.integers(-1, 40) | st.text(max_size=6), max_size=2),
                           max_size=3)


@settings(max_examples=150, deadline=None)
@given(replicas=st.none() | st.integers() | st.text(max_size=5) | st.lists(OVERRIDE | st.integers(), max_size=3),
       backups=st.none() | st.integers() | st.dictionaries(st.sampled_from(["retention_days", "note", "y"]),
                                                          st.integers(-1, 400) | st.text(max_size=4), max_size=2))
def test_any_copies_either_load_or_are_refused_with_named_errors(replicas: Any, backups: Any) -> None:
    """Whatever ``replicas:`` and ``backups:`` hold, the map loads (each replica a validated target naming its
    primary, whatever waits for the primary waiting for it) or is refused with DataMapError, never a crash."""
    entry: dict[str, Any] = {"name": "photos", "kind": "memory", "store": "photos", "match": {"owner": "{user_id}"}}
    if replicas is not None:
        entry["replicas"] = replicas
    if backups is not None:
        entry["backups"] = backups
    doc = {"version": 1, "identifiers": ["user_id"], "targets": [
        entry, {"name": "later", "kind": "memory", "store": "s", "match": {"owner": "{user_id}"}, "after": ["photos"]}]}
    try:
        datamap = DataMap.parse(yaml.safe_dump(doc))
    except DataMapError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
        return
    assert {t.name: (t.replica_of, t.backups.retention_days if t.backups else None) for t in datamap.targets} \
        == {name: (c.replica_of, c.retention_days) for name, c in snapshots.copies(datamap.text).items()}
    replicas_found = datamap.replicas_of("photos")
    assert len(replicas_found) == (len(replicas) if isinstance(replicas, list) else 0)
    assert all(datamap.target(r).kind == "memory" for r in replicas_found)
    assert set(replicas_found) <= set(datamap.target("later").after)


# -- gone_by ----------------------------------------------------------------------------------------------
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
COPIES = {"photos": Copy(retention_days=35), "photos.replica-1": Copy("photos"), "sessions": Copy()}


def test_gone_by_is_the_latest_copy_plus_the_backups() -> None:
    later = T0 + timedelta(minutes=5)
    per, request = gone_by([("photos", T0), ("photos.replica-1", later), ("sessions", T0)], COPIES)
    assert per == {"photos": later + timedelta(days=35), "photos.replica-1": later, "sessions": T0}
    assert request == later + timedelta(days=35)
    # A replica declaring backups of its own: the primary is never gone before them.
    own = {**COPIES, "photos.replica-1": Copy("photos", retention_days=60)}
    per, request = gone_by([("photos", T0), ("photos.replica-1", later)], own)
    assert per == {"photos": later + timedelta(days=60), "photos.replica-1": later + timedelta(days=60)}


def test_gone_by_is_null_until_every_copy_is_erased() -> None:
    per, request = gone_by([("photos", T0), ("photos.replica-1", None), ("sessions", None)], COPIES)
    assert per == {"photos": None, "photos.replica-1": None, "sessions": None}
    assert request == T0 + timedelta(days=35)  # what was erased ages out then; the status shows it only when done
    assert gone_by([("photos", None), ("sessions", None)], COPIES) == ({"photos": None, "sessions": None}, None)


# -- certificates and status ------------------------------------------------------------------------------
def erase(ledger: Ledger, datamap: DataMap, value: str = "4711") -> str:
    """Run a request through the ledger as workers would, every target completing in plan order."""
    request_id, _, _ = file_request(ledger, datamap, datamap.parse_subject({"user_id": value}))
    with ledger.sessions() as s:
        tasks = s.scalars(select(Task).filter_by(request_id=request_id).order_by(Task.position)).all()
    for task in tasks:
        ledger.claim(task.id)
        ledger.complete(task.id, 3, 0, level="bytes_reclaimed")
    return request_id


def test_the_certificate_dates_gone_by_from_every_copy(ledger: Ledger) -> None:
    """A target with ``backups: {retention_days: 35}`` is gone 35 days after the latest verified purge of it
    and its replicas; each replica has a row naming its primary; the request is gone by the latest."""
    request_id = erase(ledger, DataMap.parse(MAP))
    cert = ledger.certificate(request_id)
    assert cert["version"] == 2
    with ledger.sessions() as s:
        verified = {r.target: r.verified_at for r in s.scalars(
            select(CompletionRecord).filter_by(request_id=request_id))}
    rows = {t["target"]: t for t in cert["targets"]}
    assert {name: row.get("replica_of") for name, row in rows.items()} == {
        "photos": None, "photos.replica-1": "photos", "photos-us": "photos", "sessions": None}
    latest_copy = max(verified[n] for n in ("photos", "photos.replica-1", "photos-us"))
    assert rows["photos"]["gone_by"] == certificates.rfc3339(latest_copy + timedelta(days=35))
    assert rows["photos-us"]["gone_by"] == certificates.rfc3339(verified["photos-us"])
    assert rows["photos-us"]["gone_by"] == rows["photos-us"]["verified_at"]
    assert rows["sessions"]["gone_by"] == rows["sessions"]["verified_at"]
    assert cert["gone_by"] == rows["photos"]["gone_by"]  # sessions went after the photos, but no backups
    assert all(t["status"] == "completed" and t["deleted"] == 3 for t in cert["targets"])
    assert ledger.verify() == []

    status = ledger.status(request_id)
    assert status["gone_by"] == cert["gone_by"]
    assert {t["target"]: (t["gone_by"], t["replica_of"]) for t in status["tasks"]} == {
        name: (row["gone_by"], row.get("replica_of")) for name, row in rows.items()}
    listed = ledger.list_requests()["items"][0]
    assert listed["id"] == request_id and listed["gone_by"] == cert["gone_by"]


def test_gone_by_in_status_while_a_request_runs(ledger: Ledger) -> None:
    datamap = DataMap.parse(MAP)
    request_id, _, _ = file_request(ledger, datamap, datamap.parse_subject({"user_id": "12"}))
    with ledger.sessions() as s:
        photos = s.scalars(select(Task).filter_by(request_id=request_id, target="photos")).one()
    ledger.claim(photos.id)
    ledger.complete(photos.id, 1, 0)
    status = ledger.status(request_id)
    assert status["status"] == "running" and status["gone_by"] is None
    assert all(t["gone_by"] is None for t in status["tasks"])  # its replicas still hold the subject


def test_a_skipped_target_has_no_gone_by(ledger: Ledger) -> None:
    datamap = parse("""\
        version: 1
        identifiers: [user_id, email]
        targets:
          - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
          - {name: mail, kind: memory, store: mail, match: {to: "{email}"}, backups: {retention_days: 20}}
        """)
    request_id = erase(ledger, datamap)
    cert = ledger.certificate(request_id)
    rows = {t["target"]: t for t in cert["targets"]}
    assert rows["mail"]["status"] == "skipped" and rows["mail"]["gone_by"] is None
    assert cert["gone_by"] == rows["photos"]["gone_by"] == rows["photos"]["verified_at"]


def test_a_version_1_certificate_still_verifies() -> None:
    """Certificates issued before gone_by existed carry none; the signature covers what they hold."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    keys = {certificates.key_id(key.public_key()): key.public_key()}
    old = certificates.sign({"version": 1, "request_id": "9c1a7f0e-0000-4000-8000-000000000001",
                             "targets": [{"target": "photos", "verified_at": "2026-01-01T00:00:00Z"}],
                             "key_id": certificates.key_id(key.public_key())}, key)
    assert verify_certificate(canonical_json(old), keys) == old
    new = certificates.sign({**{k: v for k, v in old.items() if k != "signature"}, "version": 2,
                             "gone_by": "2026-02-05T00:00:00Z"}, key)
    assert verify_certificate(canonical_json(new), keys) == new
    with pytest.raises(CertificateError, match="bad signature"):
        verify_certificate(canonical_json({**new, "gone_by": "2026-01-01T00:00:00Z"}), keys)
