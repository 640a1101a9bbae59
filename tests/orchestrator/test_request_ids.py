"""Request ids as people type them: any unique prefix names a request (as git takes commits), ids are shown
as their shortest unique prefix, and a status filter the ledger does not know is refused. SQLite and
PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, LedgerError, UnknownRequest
from tests.fixtures.lethe import file_request

pytestmark = pytest.mark.integration

MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
"""
IDS = ["aaaa1111-0000-4000-8000-000000000001", "aaaa1111-0000-4000-8000-000000000002",
       "aaaa2222-0000-4000-8000-000000000003", "bbbb3333-0000-4000-8000-000000000004"]


@pytest.fixture
def filed(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    """Four requests whose ids share prefixes of every length that matters."""
    given = iter(IDS)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(next(given)))
    datamap = DataMap.parse(MAP)
    for n in range(len(IDS)):
        file_request(ledger, datamap, datamap.parse_subject({"user_id": str(n)}))
    monkeypatch.undo()
    yield ledger


def test_a_unique_prefix_names_its_request(filed: Ledger) -> None:
    assert filed.resolve_request_id("bbbb") == IDS[3]
    assert filed.resolve_request_id("AAAA2") == IDS[2]  # case as typed
    assert filed.resolve_request_id(IDS[0]) == IDS[0]
    assert filed.resolve_request_id("aaaa1111-0000-4000-8000-000000000002") == IDS[1]


@pytest.mark.parametrize("given", ["aaaa", "aaaa1111-0000-4000-8000-00000000000"])
def test_an_ambiguous_prefix_says_how_many_it_matches(filed: Ledger, given: str) -> None:
    with pytest.raises(LedgerError, match=r"matches [23] requests: give more characters"):
        filed.resolve_request_id(given)


@pytest.mark.parametrize("given", ["cccc", "aaa", "", "%", "aaaa_", "aaaa%", "' OR 1=1 --", "a" * 37, "ä" * 8])
def test_no_match_or_not_an_id_is_an_unknown_request(filed: Ledger, given: str) -> None:
    """Too short, not hex, LIKE wildcards, SQL: refused as unknown, never matched as a pattern."""
    with pytest.raises(UnknownRequest):
        filed.resolve_request_id(given)


def test_ids_are_shown_as_their_shortest_unique_prefix(filed: Ledger) -> None:
    short = filed.short_ids(IDS)
    assert short == {IDS[0]: IDS[0], IDS[1]: IDS[1], IDS[2]: "aaaa2222", IDS[3]: "bbbb3333"}
    assert all(filed.resolve_request_id(prefix) == rid for rid, prefix in short.items())


def test_an_unknown_status_filter_is_refused(filed: Ledger) -> None:
    with pytest.raises(LedgerError, match="unknown status 'bogus'"):
        filed.list_requests(status="bogus")
    assert len(filed.list_requests(status="planned")["items"]) == 4


def test_recorded_datasets_are_listed_newest_first_with_their_size(filed: Ledger) -> None:
    """`lethe lineage list` reads this: names, digests and member counts, never a member."""
    filed.record_lineage("faces-a", "v1", iter(["a" * 64, "b" * 64]))
    filed.record_lineage("faces-b", "v2", iter(["c" * 64]))
    listed = filed.list_datasets()
    assert [(d["name"], d["digest"], d["members"]) for d in listed] == [("faces-b", "v2", 1), ("faces-a", "v1", 2)]
    assert all(d["recorded_at"].endswith("Z") for d in listed)
