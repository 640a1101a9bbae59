"""Scanning stores for identifier values (workers/targets/scans.py): reverse template matching and the
adapters' scans on real engines (SQLite and PostgreSQL for sql, a local LanceDB, the memory store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.datamap import DataMap
from orchestrator.identifiers import FORBIDDEN_CHARACTERS
from workers.targets.base import Scanned, build_target
from workers.targets.memory import MemoryStore
from workers.targets.scans import Reverse

ALPHABET = "ab12-./"  # small, so random keys often look like filled templates
LITERAL = st.text(alphabet=ALPHABET, max_size=6)
VALUE = st.text(alphabet=st.characters(blacklist_characters="/" + "".join(FORBIDDEN_CHARACTERS),
                                       blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def templates(draw: st.DrawFn) -> str:
    """A prefix template of one kind, placed once or twice among literal text, ending at '/'."""
    parts = [draw(LITERAL), "{user_id}", draw(LITERAL)]
    if draw(st.booleans()):
        parts += ["{user_id}", draw(LITERAL)]
    return "".join(parts).rstrip("/") + "/"


@given(templates(), st.text(alphabet=ALPHABET, max_size=30))
def test_a_value_read_from_a_key_is_one_whose_prefix_holds_the_key(template: str, key: str) -> None:
    """Never extracts a value the forward template would not produce a prefix of the key for."""
    value = Reverse(template).value_of_key(key)
    if value is not None:
        assert key.startswith(template.format(user_id=value))
        assert "/" not in value


@given(templates(), VALUE, st.text(max_size=12))
def test_the_value_a_key_was_made_from_is_read_back(template: str, value: str, rest: str) -> None:
    assert Reverse(template).value_of_key(template.format(user_id=value) + rest) == value


@given(VALUE, VALUE)
def test_a_value_is_never_read_from_a_longer_ones_prefix(value: str, extra: str) -> None:
    """``12`` is never read out of ``users/123/``: the segment is cut at its '/'."""
    assert Reverse("users/{user_id}/").value_of_key(f"users/{value}{extra}/p.jpg") == value + extra


def test_templates_of_several_kinds_are_not_reversed() -> None:
    with pytest.raises(ValueError):
        Reverse("orgs/{org}/users/{user_id}/")
    assert Reverse("u-{user_id}").value("u-12") == "12"
    assert Reverse("u-{user_id}").value("x-12") is None


def _map(tmp_path: Path, targets: str) -> DataMap:
    path = tmp_path / "datamap.yaml"
    path.write_text(f"version: 1\nidentifiers: [user_id, org]\ntargets:\n{targets}")
    return DataMap.load(path)


def test_memory_scan_pages_through_the_store(tmp_path: Path) -> None:
    datamap = _map(tmp_path, '  - {name: s, kind: memory, store: s, match: {owner: "u-{user_id}"}}\n')
    MemoryStore.add("s", *({"owner": f"u-{i}"} for i in range(5)), {"owner": "x-9"}, {"other": 1})
    target = build_target(datamap.target("s"))
    assert isinstance(target, Scanned) and target.unscannable() is None
    seen, after, pages = [], None, 0
    while True:
        page = target.scan(after, 3)
        seen += page.values
        pages += 1
        if page.next is None:
            break
        after = page.next
    assert seen == ["0", "1", "2", "3", "4"] and pages == 3


def test_selectors_that_cannot_be_scanned_say_so(tmp_path: Path) -> None:
    datamap = _map(tmp_path, '  - {name: two, kind: memory, store: s, match: {a: "{user_id}", b: "{org}"}}\n'
                             "  - name: keyed\n    kind: s3\n    bucket: photos\n    keys_query: {url: "
                             '"sqlite:///x.db", sql: "SELECT k FROM t WHERE u = :user_id"}\n')
    two = build_target(datamap.target("two"))
    keyed = build_target(datamap.target("keyed"))
    assert isinstance(two, Scanned) and "2 identifier kinds" in (two.unscannable() or "")
    assert isinstance(keyed, Scanned) and "keys_query" in (keyed.unscannable() or "")


@pytest.mark.parametrize("engine_url", ["sqlite", "postgresql"])
def test_sql_scan_reads_distinct_values_in_pages(engine_url: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'app.db'}" if engine_url == "sqlite" else request.getfixturevalue("pg_database")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (pk INTEGER PRIMARY KEY, id INTEGER, name TEXT)"))
        conn.execute(text("INSERT INTO users (pk, id, name) VALUES (1, 12, 'a'), (2, 123, 'b'), (3, 12, 'c'), "
                          "(4, NULL, 'd'), (5, 7, 'e')"))
    engine.dispose()
    datamap = _map(tmp_path, f'  - {{name: users, kind: sql, url: "{url}", table: users, '
                             'where: {id: "{user_id}"}}\n')
    target = build_target(datamap.target("users"))
    assert isinstance(target, Scanned) and target.unscannable() is None
    first = target.scan(None, 2)
    second = target.scan(first.next, 2)
    assert first.values == ["7", "12"] and second.values == ["123"] and second.next is None


def test_qdrant_scan_reads_the_payload_field_in_pages(tmp_path: Path) -> None:
    from qdrant_client import models

    from workers.targets import qdrant as qdrant_module

    location = str(tmp_path / "qdrant")
    datamap = _map(tmp_path, f'  - {{name: faces, kind: qdrant, location: "{location}", collection: faces, '
                             'match: {owner: "{user_id}"}}\n')
    client = qdrant_module.qdrant_client(location=location)
    try:
        client.create_collection("faces", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        owners: list[object] = ["12", "123", "12", 7, None, True]
        client.upsert("faces", [models.PointStruct(id=i + 1, vector=[1.0, float(i)], payload={"owner": owner})
                                for i, owner in enumerate(owners)])
        target = build_target(datamap.target("faces"))
        assert isinstance(target, Scanned) and target.unscannable() is None
        first = target.scan(None, 4)
        second = target.scan(first.next, 4)
        assert first.values == ["12", "123", "7"] and first.read == 4
        assert second.values == [] and second.read == 2 and second.next is None  # no null or boolean value
    finally:
        qdrant_module.close_clients()
