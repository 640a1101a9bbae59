"""QdrantTarget beyond the contract, on real Qdrant local mode: nearest-neighbour read-back, ids_query on
PostgreSQL, type conversion, hostile identifiers, configuration, and vendor errors translated at the edge."""

from __future__ import annotations

import gc
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from sqlalchemy import create_engine, text

from orchestrator.identifiers import Subject
from tests.contract.base import OTHERS, SUBJECT, Beats
from tests.contract.test_qdrant_contract import (
    COLLECTION,
    DIM,
    FIELD,
    QdrantContractStore,
    _fast_writes,
    local_store,
    make_target,
    vectors_near,
)
from workers.targets import qdrant as qdrant_module
from workers.targets.base import PermanentError, RetryableError
from workers.targets.qdrant import PAGE, QdrantConfig, QdrantTarget
from workers.targets.qdrant_filters import field_condition, point_id
from workers.targets.selectors import dispose_engine

pytestmark = pytest.mark.integration

SECRET = "u-4711-secret"  # an identifier that must never appear in an error message


def subject(user_id: str) -> Subject:
    return Subject.parse({"user_id": user_id}, {"user_id": None})


def config(where: str | Path, **fields: Any) -> QdrantConfig:
    """A local-mode entry on the folder ``where``; ``fields`` override or add entries."""
    base: dict[str, Any] = {"name": "faces", "kind": "qdrant", "location": str(where), "collection": COLLECTION,
                            "match": {FIELD: "{user_id}"}}
    return QdrantConfig.model_validate({**base, **fields})


class SmallStore:
    """A fresh local-mode collection in its own folder, written through the shared client cache."""

    def __init__(self, location: Path) -> None:
        self.location = str(location)
        self.next_id = 1
        client = self.client()
        client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIM,
                                                                                distance=models.Distance.COSINE))
        _fast_writes(client)

    def client(self) -> Any:
        return qdrant_module.qdrant_client(location=self.location)

    def add(self, *payloads: dict[str, Any], ids: list[int | str] | None = None) -> list[int | str]:
        ids = ids or list(range(self.next_id, self.next_id + len(payloads)))
        self.next_id += len(payloads)
        vectors = vectors_near(self.next_id, len(payloads))
        self.client().upsert(COLLECTION, [
            models.PointStruct(id=pid, vector=vectors[n].tolist(), payload=payload)
            for n, (pid, payload) in enumerate(zip(ids, payloads, strict=True))
        ])
        return ids

    def payloads(self) -> list[dict[str, Any]]:
        records, _ = self.client().scroll(COLLECTION, limit=100_000, with_payload=True)
        return sorted((r.payload or {} for r in records), key=repr)

    def ids(self) -> set[Any]:
        records, _ = self.client().scroll(COLLECTION, limit=100_000, with_payload=False)
        return {r.id for r in records}

    def total(self) -> int:
        return int(self.client().count(COLLECTION, exact=True).count)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[SmallStore]:
    store = SmallStore(tmp_path / "small")
    yield store
    qdrant_module.close_clients()


def seeded_estate(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, layout: str
                  ) -> Iterator[QdrantContractStore]:
    for store in local_store(tmp_path, tmp_path_factory, layout):
        for uid in (SUBJECT, *OTHERS):
            store.seed(uid)
        yield store


@pytest.fixture
def estate(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantContractStore]:
    """The contract's 10k-point string estate with subjects 12, 123, 1234 and 112 seeded."""
    yield from seeded_estate(tmp_path, tmp_path_factory, "str")


@pytest.fixture
def small_estate(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantContractStore]:
    """The contract's 2k-point integer estate with subjects 12, 123, 1234 and 112 seeded."""
    yield from seeded_estate(tmp_path, tmp_path_factory, "int")


def search(store: QdrantContractStore, vector: list[float], limit: int) -> list[Any]:
    answer = store.client().query_points(COLLECTION, query=vector, limit=limit, with_payload=False)
    return [point.id for point in answer.points]


# --- nearest-neighbour read-back ----------------------------------------------------------------------------


def test_search_after_purge_finds_none_of_the_subject_and_others_are_unchanged(
    estate: QdrantContractStore,
) -> None:
    """After the purge no search returns subject 12's points; every other search answer is the old one
    without them."""
    gone = set(estate.point_ids[SUBJECT])
    probes = estate.vectors[SUBJECT] + [v for uid in OTHERS for v in estate.vectors[uid][:3]]
    probes += [v.tolist() for v in vectors_near(10_007, 3)]  # near filler owner 5007's cluster
    before = [search(estate, v, 10 + len(gone)) for v in probes]
    assert any(gone.intersection(ids) for ids in before), "the probes must reach the subject before"

    make_target(estate).purge(subject(SUBJECT), Beats())

    for vector in estate.vectors[SUBJECT]:
        assert not gone.intersection(search(estate, vector, 50))
    for vector, old in zip(probes, before, strict=True):
        assert search(estate, vector, 10) == [pid for pid in old if pid not in gone][:10]


def test_verify_counts_a_purged_point_that_search_still_returns(small_estate: QdrantContractStore) -> None:
    """A purged point back under another payload escapes the filter but not the neighbour read-back."""
    target = make_target(small_estate)
    target.purge(subject(SUBJECT), Beats())
    assert target.verify(subject(SUBJECT)) == 0
    comeback = small_estate.point_ids[SUBJECT][3]
    back = models.PointStruct(id=comeback, vector=small_estate.vectors[SUBJECT][3], payload={FIELD: "someone-else"})
    small_estate.client().upsert(COLLECTION, [back])
    assert target.count(subject(SUBJECT)) == 0
    assert target.verify(subject(SUBJECT)) == 1
    assert make_target(small_estate).verify(subject(SUBJECT)) == 0  # a fresh instance kept no vectors


def test_purge_keeps_the_subjects_vectors_for_verify(small_estate: QdrantContractStore) -> None:
    """purge reads every point's vector before deleting it and keeps it for the read-back."""
    target = make_target(small_estate)
    target.purge(subject(SUBJECT), Beats())
    kept = sorted(tuple(round(x, 5) for x in v) for _, v in target._probes)
    seeded = sorted(tuple(round(x, 5) for x in v) for v in small_estate.vectors[SUBJECT])
    assert kept == seeded
    assert target._purged_ids == set(small_estate.point_ids[SUBJECT])


def test_heartbeat_is_called_per_page(small: SmallStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subject with more than two pages of points gets a heartbeat per page and loses every point."""
    monkeypatch.setattr(qdrant_module, "LOCAL_PAGE", PAGE)
    small.add(*({FIELD: "77", "n": n} for n in range(2 * PAGE + 10)), *({FIELD: "78"} for _ in range(5)))
    beats = Beats()
    target = QdrantTarget(config(small.location))
    assert target.purge(subject("77"), beats) == 2 * PAGE + 10
    assert beats.calls >= 3
    assert target.verify(subject("77")) == 0
    assert small.total() == 5


def test_a_local_purge_reads_the_collection_once_and_deletes_by_id(
    small: SmallStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local mode (a folder no one else writes during the purge) reads on from each page's end instead of
    from the start, and deletes each page by its ids, not by a filter it would evaluate on every point."""
    monkeypatch.setattr(qdrant_module, "LOCAL_PAGE", PAGE)
    small.add(*({FIELD: "77", "n": n} for n in range(2 * PAGE + 10)), *({FIELD: "78"} for _ in range(5)))
    client = small.client()
    offsets: list[Any] = []
    selectors: list[Any] = []
    scroll, delete = client.scroll, client.delete

    def spy_scroll(*args: Any, **kwargs: Any) -> Any:
        offsets.append(kwargs.get("offset"))
        return scroll(*args, **kwargs)

    def spy_delete(*args: Any, **kwargs: Any) -> Any:
        selectors.append(kwargs["points_selector"])
        return delete(*args, **kwargs)

    monkeypatch.setattr(client, "scroll", spy_scroll)
    monkeypatch.setattr(client, "delete", spy_delete)
    target = QdrantTarget(config(small.location))
    assert target.purge(subject("77"), Beats()) == 2 * PAGE + 10
    assert len(offsets) == 3 and offsets[0] is None and None not in offsets[1:]
    assert all(isinstance(s, models.PointIdsList) for s in selectors) and len(selectors) == 3
    assert target.verify(subject("77")) == 0 and small.total() == 5


# --- missing collection, errors -------------------------------------------------------------------------


def test_missing_collection_is_a_permanent_error(small: SmallStore) -> None:
    """count, purge and verify on a collection that does not exist fail permanently, naming no identifier."""
    target = QdrantTarget(config(small.location, collection="no-such-collection"))
    for call in (lambda: target.count(subject(SECRET)), lambda: target.purge(subject(SECRET), Beats()),
                 lambda: target.verify(subject(SECRET))):
        with pytest.raises(PermanentError) as info:
            call()
        assert "no-such-collection does not exist" in str(info.value)
        assert SECRET not in str(info.value) and small.location not in str(info.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_retryable() -> None:
    """A server URL nobody listens on (connection refused) raises RetryableError without the identifier."""
    target = QdrantTarget(QdrantConfig(name="faces", kind="qdrant", url=f"http://127.0.0.1:{free_port()}",
                                       collection=COLLECTION, match={FIELD: "{user_id}"}))
    try:
        with pytest.raises(RetryableError) as info:
            target.count(subject(SECRET))
        assert SECRET not in str(info.value)
        assert target.level == "invisible"  # a server purge is invisible until a vacuum is confirmed
    finally:
        qdrant_module.close_clients()


def response(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "x", f'{{"status": {{"error": "bad {SECRET}"}}}}'.encode(), httpx.Headers())


@pytest.mark.parametrize(("error", "expected"), [
    (response(503), RetryableError),
    (response(500), RetryableError),
    (response(429), RetryableError),
    (ResourceExhaustedResponse(f"slow down {SECRET}", 3), RetryableError),
    (ResponseHandlingException(httpx.ConnectError(f"refused {SECRET}")), RetryableError),
    (ResponseHandlingException(httpx.ReadTimeout(f"timeout {SECRET}")), RetryableError),
    (response(400), PermanentError),
    (response(403), PermanentError),
    (ValueError(f"Wrong input {SECRET}"), PermanentError),
])
def test_vendor_errors_are_translated(error: Exception, expected: type[Exception]) -> None:
    """Outages, timeouts, 429 and 5xx are retryable, other errors permanent; no vendor text survives."""
    translated = qdrant_module._translated(error, "delete", "faces")
    assert type(translated) is expected
    assert SECRET not in str(translated)
    assert str(translated).startswith("Qdrant delete on collection faces")


def test_not_found_response_means_missing_collection(small: SmallStore) -> None:
    """A 404 from the server is reported as the missing collection, permanently."""
    target = QdrantTarget(config(small.location))
    with pytest.raises(PermanentError, match="faces does not exist"), target._translate("count"):
        raise response(404)


# qdrant-client leaves the .lock file of a client that failed to lock the folder open until it is
# garbage-collected (a ResourceWarning); collected inside this test, where that is expected.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_folder_held_by_another_client_is_retryable(tmp_path: Path) -> None:
    """A local folder another client holds (another process, in production) is retried, not failed."""
    folder = tmp_path / "held"
    holder = QdrantClient(path=str(folder))
    try:
        with pytest.raises(RetryableError, match="in use by another process") as info:
            QdrantTarget(config(folder)).count(subject("12"))
        assert str(folder) not in str(info.value)
        del info  # its traceback holds the failed client
    finally:
        holder.close()
        qdrant_module.close_clients()
        gc.collect()


def test_one_client_per_folder_and_close_releases_it(small: SmallStore) -> None:
    """Spellings of one folder share a client; close_clients() lets another client open the folder."""
    assert qdrant_module.qdrant_client(location=small.location) is qdrant_module.qdrant_client(
        location=small.location + "/./")
    qdrant_module.close_clients()
    other = QdrantClient(path=small.location)
    other.close()


# --- ids_query ----------------------------------------------------------------------------------------------


UUID_12 = str(uuid.UUID(int=12))
UUID_123 = str(uuid.UUID(int=123))


@pytest.fixture
def app_db(pg_database: str) -> Iterator[str]:
    """The application's table of face points: owner -> point id (integers and UUIDs, as text)."""
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE face_points (owner_id TEXT NOT NULL, point_id TEXT NOT NULL)"))
        conn.execute(text("INSERT INTO face_points VALUES (:o, :p)"), [
            {"o": "12", "p": "1"}, {"o": "12", "p": "2"}, {"o": "12", "p": UUID_12},
            {"o": "12", "p": "2"},  # the same point on two rows is one point
            {"o": "12", "p": "999"},  # never written to the collection
            {"o": "123", "p": "3"}, {"o": "123", "p": UUID_123}, {"o": "1234", "p": "4"},
        ])
    engine.dispose()
    yield pg_database
    dispose_engine(pg_database)  # the adapter's pool, before the database is dropped


def ids_query(url: str, sql: str = "SELECT point_id FROM face_points WHERE owner_id = :user_id") -> dict[str, str]:
    return {"url": url, "sql": sql}


def test_ids_query_erases_exactly_the_listed_points(small: SmallStore, app_db: str) -> None:
    """Point ids (integers and UUIDs) listed for subject 12 in PostgreSQL go; 123's and 1234's stay."""
    small.add(*({"n": n} for n in range(6)), ids=[1, 2, 3, 4, UUID_12, UUID_123])
    target = QdrantTarget(config(small.location, match=None, ids_query=ids_query(app_db)))
    assert target.config.required_identifiers() == {"user_id"}
    assert target.count(subject("12")) == 3
    assert target.purge(subject("12"), Beats()) == 3
    assert target.verify(subject("12")) == 0
    assert small.ids() == {3, 4, UUID_123}
    assert target.purge(subject("12"), Beats()) == 0


def test_ids_query_and_match_together_take_the_union(small: SmallStore, app_db: str) -> None:
    """With match and ids_query, a point goes when either selects it, and nothing else does."""
    small.add({"n": 0}, {"n": 1}, {FIELD: "12"}, {FIELD: "123"}, ids=[1, 3, 10, 11])
    target = QdrantTarget(config(small.location, ids_query=ids_query(app_db)))
    assert target.purge(subject("12"), Beats()) == 2
    assert small.ids() == {3, 11}


def test_ids_query_returning_a_non_id_fails_permanently(small: SmallStore, app_db: str) -> None:
    """A row that is not a point id (not an unsigned integer or UUID) fails the task; nothing is deleted."""
    small.add({"n": 0}, ids=[1])
    sql = "SELECT 'photo-' || point_id FROM face_points WHERE owner_id = :user_id"
    target = QdrantTarget(config(small.location, match=None, ids_query=ids_query(app_db, sql)))
    with pytest.raises(PermanentError, match="not a point id"):
        target.purge(subject("12"), Beats())
    assert small.ids() == {1}


@pytest.mark.parametrize(("value", "expected"), [
    (7, 7), ("7", 7), (UUID_12.upper(), UUID_12), (uuid.UUID(int=5), str(uuid.UUID(int=5))), (2**64 - 1, 2**64 - 1),
])
def test_point_ids_are_normalised(value: Any, expected: int | str) -> None:
    """Integers, decimal text and UUIDs in any spelling become the ids Qdrant stores."""
    assert point_id(value) == expected


@pytest.mark.parametrize("value", [-1, 2**64, True, "07", "-3", "7.0", "abc", None, 7.0])
def test_values_that_are_not_point_ids_are_refused(value: Any) -> None:
    """Negative, oversized, boolean, float and non-canonical values are not point ids."""
    with pytest.raises(PermanentError):
        point_id(value)


# --- type conversion ----------------------------------------------------------------------------------------


def index(data_type: models.PayloadSchemaType) -> models.PayloadIndexInfo:
    return models.PayloadIndexInfo(data_type=data_type, points=0)


@pytest.mark.parametrize("value", ["abc", "012", "+12", "12.0", "1e3", "-0", "9223372036854775808", "12 a"])
def test_integer_index_refuses_a_value_that_is_not_an_integer(value: str) -> None:
    """A field indexed as integer and a value that is not a canonical int64 fail; never a silent zero."""
    with pytest.raises(PermanentError, match="indexed as integer"):
        field_condition(FIELD, value, index(models.PayloadSchemaType.INTEGER))


@pytest.mark.parametrize(("value", "number"), [("12", 12), ("-3", -3), ("0", 0), ("9223372036854775807", 2**63 - 1)])
def test_integer_index_matches_the_integer(value: str, number: int) -> None:
    """A field indexed as integer is matched by the converted integer only."""
    condition = field_condition(FIELD, value, index(models.PayloadSchemaType.INTEGER))
    assert condition == models.FieldCondition(key=FIELD, match=models.MatchValue(value=number))


@pytest.mark.parametrize("data_type", [models.PayloadSchemaType.KEYWORD, models.PayloadSchemaType.UUID])
def test_keyword_index_matches_the_string(data_type: models.PayloadSchemaType) -> None:
    """A field indexed as keyword or uuid is matched by the string, even when it spells a number."""
    condition = field_condition(FIELD, "12", index(data_type))
    assert condition == models.FieldCondition(key=FIELD, match=models.MatchValue(value="12"))


@pytest.mark.parametrize("data_type", [models.PayloadSchemaType.FLOAT, models.PayloadSchemaType.TEXT,
                                       models.PayloadSchemaType.BOOL, models.PayloadSchemaType.DATETIME])
def test_other_index_types_are_refused(data_type: models.PayloadSchemaType) -> None:
    """Equality on a float, text, bool or datetime field is not an identifier match: refused."""
    with pytest.raises(PermanentError, match=f"indexed as {data_type.value}"):
        field_condition(FIELD, "12", index(data_type))


def test_unindexed_field_matches_both_forms_of_an_integer() -> None:
    """Without an index, '12' matches the string or the integer on the same key; 'abc' only the string."""
    both = field_condition(FIELD, "12")
    assert both == models.Filter(should=[models.FieldCondition(key=FIELD, match=models.MatchValue(value="12")),
                                         models.FieldCondition(key=FIELD, match=models.MatchValue(value=12))])
    assert field_condition(FIELD, "abc") == models.FieldCondition(key=FIELD, match=models.MatchValue(value="abc"))


@pytest.mark.parametrize("user_id", ["abc", "12x", "012"])
def test_value_that_cannot_become_an_integer_payload_fails(small: SmallStore, user_id: str) -> None:
    """Payloads stored as integers and an identifier that is no integer: count, purge and verify fail
    permanently and nothing is deleted."""
    small.add(*({FIELD: n} for n in (12, 12, 123, 0)))
    target = QdrantTarget(config(small.location))
    for call in (lambda: target.count(subject(user_id)), lambda: target.purge(subject(user_id), Beats()),
                 lambda: target.verify(subject(user_id))):
        with pytest.raises(PermanentError, match="cannot be converted") as info:
            call()
        assert user_id not in str(info.value)
    assert small.total() == 4


def test_non_integer_value_on_string_payloads_is_a_true_zero(small: SmallStore) -> None:
    """On a field holding strings, an identifier with no data is simply zero, not an error."""
    small.add({FIELD: "12"}, {FIELD: "abcd"})
    target = QdrantTarget(config(small.location))
    assert target.count(subject("abc")) == 0
    assert target.purge(subject("abc"), Beats()) == 0
    assert small.total() == 2


# --- hostile identifiers -----------------------------------------------------------------------------------

HOSTILE = ["a:b", "x OR 1=1", '12" OR "1"="1', "' OR ''='", "12 || true", "12,123", "$or", "null", "true",
           '"12"', "subject_id:12", "\uff11\uff12", "12 OR subject_id != 12"]
BYSTANDERS = ["12", "123", "a", "b", "x", "1=1", "1", "", None, True, 12, "12,", "OR", "12 ", "12\u00a0"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_identifier_erases_only_its_exact_value(small: SmallStore, hostile: str) -> None:
    """An identifier that looks like filter syntax matches only a payload equal to exactly that string."""
    small.add(*({FIELD: value} for value in HOSTILE), *({FIELD: value} for value in BYSTANDERS),
              {FIELD: hostile}, {"other": hostile})
    before = small.payloads()
    target = QdrantTarget(config(small.location))
    assert target.purge(subject(hostile), Beats()) == 2
    assert target.verify(subject(hostile)) == 0
    expected = list(before)
    expected.remove({FIELD: hostile})
    expected.remove({FIELD: hostile})
    assert small.payloads() == expected


def test_every_match_field_must_be_equal(small: SmallStore) -> None:
    """match with two fields is an AND: the subject's points in another tenant stay."""
    small.add({FIELD: "12", "tenant": "acme"}, {FIELD: "12", "tenant": "globex"}, {FIELD: "123", "tenant": "acme"})
    target = QdrantTarget(config(small.location, match={"tenant": "acme", FIELD: "{user_id}"}))
    assert target.purge(subject("12"), Beats()) == 1
    assert small.payloads() == sorted([{FIELD: "12", "tenant": "globex"}, {FIELD: "123", "tenant": "acme"}],
                                      key=repr)


def test_nested_payload_keys_are_matched(small: SmallStore) -> None:
    """A dotted match key reaches a nested payload field and only the subject's value in it."""
    small.add({"owner": {"id": "12"}}, {"owner": {"id": "123"}}, {"owner.id": "x"})
    target = QdrantTarget(config(small.location, match={"owner.id": "{user_id}"}))
    assert target.purge(subject("12"), Beats()) == 1
    assert target.count(subject("123")) == 1


# --- dataset erasure ---------------------------------------------------------------------------------------


def test_dataset_erasure_uses_the_literal_match(small: SmallStore, tmp_path: Path) -> None:
    """A dataset's literal match replaces the subject's template (as the task does with model_copy); the
    ids query, which needs an identifier, is left out."""
    small.add({"source": "okcupid-2014", FIELD: "12"}, {"source": "okcupid-2014", FIELD: "5"},
              {"source": "okcupid-2015", FIELD: "12"}, {"source": 2014}, {FIELD: "okcupid-2014"})
    cfg = config(small.location, ids_query=ids_query(f"sqlite:///{tmp_path / 'never-opened.db'}"))
    cfg.check_dataset_selector({"match": {"source": "okcupid-2014"}})
    target = QdrantTarget(cfg.model_copy(update={"match": {"source": "okcupid-2014"}}))
    assert target.count(Subject({})) == 2
    assert target.purge(Subject({}), Beats()) == 2
    assert target.verify(Subject({})) == 0
    assert small.total() == 3
    assert not (tmp_path / "never-opened.db").exists()
    by_year = QdrantTarget(cfg.model_copy(update={"match": {"source": 2014}}))
    assert by_year.purge(Subject({}), Beats()) == 1


@pytest.mark.parametrize(("selector", "message"), [
    ({"match": {"source": "{user_id}"}}, "literal"),
    ({"match": {}}, "empty"),
    ({"match": {"a b": "x"}}, "not a plain payload key"),
    ({"match": {"source": True}}, "non-empty string or an integer"),
    ({"match": {"source": 1.5}}, "non-empty string or an integer"),
    ({"ids_query": {"url": "sqlite://", "sql": "SELECT 1"}}, "ids_query is a per-subject lookup"),
    ({"prefix": "sources/"}, "unknown field"),
])
def test_bad_dataset_selectors_are_refused(selector: dict[str, Any], message: str) -> None:
    """A dataset selector is a literal, non-empty payload match on plain keys, and nothing else."""
    with pytest.raises(ValueError, match=re_escape(message)):
        config("v").check_dataset_selector(selector)


# --- configuration -----------------------------------------------------------------------------------------


def test_spec_example_entry_validates() -> None:
    """The SPEC's qdrant entry validates, and needs the user_id identifier."""
    cfg = QdrantConfig.model_validate({"name": "face-embeddings", "kind": "qdrant", "location": "./vectors",
                                       "collection": "faces", "match": {"subject_id": "{user_id}"}})
    assert cfg.required_identifiers() == {"user_id"}


def test_table_is_a_synonym_of_collection() -> None:
    """`table` names the collection like `collection` does; giving both is refused."""
    raw = {"name": "f", "kind": "qdrant", "location": "v", "table": "faces", "match": {FIELD: "{user_id}"}}
    assert QdrantConfig.model_validate(raw).collection == "faces"
    with pytest.raises(ValidationError):
        QdrantConfig.model_validate({**raw, "collection": "faces"})


def test_collection_is_required() -> None:
    """Without collection or table the entry is refused."""
    with pytest.raises(ValidationError, match="collection"):
        QdrantConfig.model_validate({"name": "f", "kind": "qdrant", "location": "v", "match": {FIELD: "{user_id}"}})


@pytest.mark.parametrize(("fields", "message"), [
    ({"url": "http://qdrant:6333"}, "exactly one of location"),
    ({"location": None}, "exactly one of location"),
    ({"match": {FIELD: "12"}}, "placeholder"),
    ({"match": {}}, "at least one payload field"),
    ({"match": {"a b": "{user_id}"}}, "not a plain payload key"),
    ({"match": {"a[]": "{user_id}"}}, "not a plain payload key"),
    ({"match": {FIELD: "{user_id!r}"}}, "only {identifier_kind}"),
    ({"match": None}, "give match, ids_query or both"),
    ({"location": ":memory:"}, "must be a folder"),
    ({"api_key": "k"}, "not to local mode"),
    ({"vacuum": {"wait_seconds": 5}}, "not to local mode"),
    ({"collection": "../faces"}, "plain name"),
    ({"collection": "a/b"}, "plain name"),
    ({"ids_query": {"url": "sqlite://", "sql": "DELETE FROM points"}}, "must be a SELECT"),
    ({"ids_query": {"url": "sqlite://", "sql": "SELECT id FROM points"}}, "needs a :kind parameter"),
])
def test_bad_configuration_is_refused(fields: dict[str, Any], message: str) -> None:
    """Each misconfiguration is refused when the data map loads, saying what is wrong."""
    with pytest.raises((ValidationError, ValueError), match=re_escape(message)):
        config("v", **fields)


def re_escape(message: str) -> str:
    import re

    return re.escape(message)


def test_server_configuration() -> None:
    """A server entry takes url, an API key kept secret, and the opt-in vacuum settings."""
    cfg = QdrantConfig.model_validate({"name": "f", "kind": "qdrant", "url": "https://q:6333", "collection": "c",
                                       "match": {FIELD: "{user_id}"}, "api_key": "s3cr3t",
                                       "vacuum": {"min_vectors": 500, "wait_seconds": 5}})
    assert "s3cr3t" not in repr(cfg)
    assert cfg.server_api_key() == "s3cr3t"
    assert cfg.vacuum is not None and cfg.vacuum.min_vectors == 500
    with pytest.raises(ValidationError, match="http"):
        QdrantConfig.model_validate({"name": "f", "kind": "qdrant", "url": "q:6333", "collection": "c",
                                     "match": {FIELD: "{user_id}"}})


def test_api_key_from_an_unset_environment_variable_fails_permanently(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_key_env naming an unset variable fails the task with a message naming the variable only."""
    monkeypatch.delenv("LETHE_TEST_QDRANT_KEY", raising=False)
    cfg = QdrantConfig.model_validate({"name": "f", "kind": "qdrant", "url": "https://q:6333", "collection": "c",
                                       "match": {FIELD: "{user_id}"}, "api_key_env": "LETHE_TEST_QDRANT_KEY"})
    with pytest.raises(PermanentError, match="LETHE_TEST_QDRANT_KEY is not set"):
        QdrantTarget(cfg).count(subject(SECRET))


def test_ids_query_parameters_are_required_identifiers() -> None:
    """Identifiers bound in ids_query count as identifiers the target needs, beside match placeholders."""
    cfg = config("v", ids_query={"url": "sqlite://", "sql": "SELECT id FROM p WHERE email = :email"})
    assert cfg.required_identifiers() == {"user_id", "email"}


def test_registry_builds_the_qdrant_target(tmp_path: Path) -> None:
    """The registry's 'qdrant' kind is this adapter, and it satisfies the Target protocol."""
    from workers.targets.base import Target, build_target, target_class

    assert target_class("qdrant") is QdrantTarget
    assert isinstance(build_target(config(tmp_path)), Target)
