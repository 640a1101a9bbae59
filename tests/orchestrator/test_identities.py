"""identities: in the data map: what loads and what is refused (undeclared kinds, cycles, every statement the
shared read-only checker refuses), chain order, the planner's reasons, and resolve() on a real SQLite
database: values validated and normalised like a request's, NULLs left out, too many refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from orchestrator.datamap import DataMap, DataMapError
from orchestrator.identifiers import InvalidIdentifier, Subject, normalise_value
from orchestrator.identities import MAX_VALUES, ResolutionRefused, ResolutionUnavailable, subjects_for
from orchestrator.planner import plan
from tests.workers.targets.test_sql_check import REFUSED
from workers.targets.selectors import dispose_engine

TARGETS = """
targets:
  - name: by-user
    kind: memory
    store: s
    match: {owner: "{user_id}"}
  - name: by-device
    kind: memory
    store: d
    match: {device: "{device_id}"}
"""


def datamap(identities: str, url: str = "sqlite://") -> DataMap:
    return DataMap.parse(f"""
version: 1
identifiers: {{email: null, user_id: "[0-9]+", device_id: null, phone: null}}
identities:
{identities.replace("{url}", url)}
{TARGETS}""")


def entry(name: str, source: str, to: str, sql: str) -> str:
    return f"""  - name: {name}
    from: {source}
    to: {to}
    url: "{{url}}"
    sql: "{sql}"
"""


USER_BY_EMAIL = entry("user-by-email", "email", "user_id", "SELECT id FROM users WHERE lower(email) = :email")
DEVICE_BY_USER = entry("device-by-user", "user_id", "device_id", "SELECT id FROM devices WHERE user_id = :user_id")


def refused(identities: str, url: str = "sqlite://") -> str:
    with pytest.raises(DataMapError) as caught:
        datamap(identities, url)
    return str(caught.value)


def test_a_chain_loads_in_the_order_it_must_run() -> None:
    """Declared last-link first, the chain still runs email -> user_id -> device_id."""
    loaded = datamap(DEVICE_BY_USER + USER_BY_EMAIL)
    assert [i.name for i in loaded.identities] == ["user-by-email", "device-by-user"]


def test_a_cycle_is_refused_naming_it() -> None:
    back = entry("email-by-device", "device_id", "email", "SELECT email FROM devices WHERE id = :device_id")
    message = refused(USER_BY_EMAIL + DEVICE_BY_USER + back)
    assert "identities: resolutions form a cycle" in message
    # in the direction the lookups run (from -> to), starting anywhere on the loop
    assert any(f"cycle: {chain}" in message for chain in ("email -> user_id -> device_id -> email",
                                                         "user_id -> device_id -> email -> user_id",
                                                         "device_id -> email -> user_id -> device_id")), message


def test_a_two_way_pair_is_a_cycle_too() -> None:
    back = entry("email-by-user", "user_id", "email", "SELECT email FROM users WHERE id = :user_id")
    assert "cycle" in refused(USER_BY_EMAIL + back)


@pytest.mark.parametrize("source,to,missing", [("email", "account", "account"), ("login", "user_id", "login")])
def test_kinds_must_be_declared(source: str, to: str, missing: str) -> None:
    sql = f"SELECT id FROM users WHERE x = :{source}"
    assert f"undeclared identifier kinds: {missing}" in refused(entry("r", source, to, sql))


def test_from_and_to_must_differ_and_names_be_unique() -> None:
    assert "from and to are both 'email'" in refused(entry("r", "email", "email", "SELECT e FROM u WHERE e = :email"))
    assert "duplicate identity name" in refused(USER_BY_EMAIL + USER_BY_EMAIL)


def test_the_sql_binds_exactly_the_from_kind() -> None:
    """Only the from kind's value exists when the lookup runs: another parameter is refused at load."""
    other = entry("r", "email", "user_id", "SELECT id FROM users WHERE phone = :phone")
    assert "sql must bind exactly :email" in refused(other)
    both = entry("r", "email", "user_id", "SELECT id FROM users WHERE email = :email AND phone = :phone")
    assert "sql must bind exactly :email" in refused(both)


@pytest.mark.parametrize("sql,reason", REFUSED.values(), ids=list(REFUSED))
def test_hostile_sql_is_refused_at_load_by_the_shared_checker(sql: str, reason: str) -> None:
    """The same statements keys_query refuses, with the same reason: one checker (sql_check)."""
    sql = sql.replace(":user_id", ":email").replace(":p", ":email").replace('"', '\\"')
    message = refused(entry("hostile", "email", "user_id", sql), "postgresql://reader@db/app")
    assert "identity 'hostile'" in message and reason in message, message


def test_unknown_fields_and_bad_shapes_are_refused() -> None:
    assert "extra" in refused(USER_BY_EMAIL + "    password: x\n").lower()
    with pytest.raises(DataMapError, match="identities must be a list"):
        DataMap.parse(f"version: 1\nidentifiers: [email, user_id]\nidentities: {{a: 1}}\n{TARGETS}")


# -- resolve() against a real SQLite database ------------------------------------------------------
@pytest.fixture
def app(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    db = create_engine(url)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE users (id TEXT, email TEXT)"))
        conn.execute(text("CREATE TABLE devices (id TEXT, user_id TEXT)"))
        conn.execute(text("INSERT INTO users VALUES ('12', 'carl@example.org'), ('13', 'twins@example.org'), "
                          "('14', 'twins@example.org'), (NULL, 'ghost@example.org'), ('12', 'carl@example.org'), "
                          "('*', 'wild@example.org'), ('x', 'pattern@example.org')"))
        conn.execute(text("INSERT INTO devices VALUES ('D-1', '13'), ('d-2', '14'), ('d-3', '99')"))
    db.dispose()
    yield url
    dispose_engine(url)


def resolved(app: str, email: str, identities: str = USER_BY_EMAIL + DEVICE_BY_USER) -> dict[str, tuple[str, ...]]:
    loaded = datamap(identities, app)
    return dict(loaded.resolve(loaded.parse_subject({"email": email})).values)


def test_values_are_distinct_and_chains_follow_every_value(app: str) -> None:
    assert resolved(app, "carl@example.org") == {"user_id": ("12",), "device_id": ()}
    assert resolved(app, "TWINS@example.org") == {"user_id": ("13", "14"), "device_id": ("D-1", "d-2")}


def test_nulls_are_left_out_and_nothing_found_is_an_empty_kind(app: str) -> None:
    assert resolved(app, "ghost@example.org") == {"user_id": (), "device_id": ()}
    assert resolved(app, "nobody@example.org") == {"user_id": (), "device_id": ()}


@pytest.mark.parametrize("email", ["wild@example.org", "pattern@example.org"])
def test_a_value_that_fails_the_request_validator_files_nothing(app: str, email: str) -> None:
    """A wildcard, or a value off the kind's pattern, from the application's own table: refused."""
    with pytest.raises(ResolutionRefused, match="user-by-email") as caught:
        resolved(app, email)
    assert "*" not in str(caught.value).replace("'*'", "") and isinstance(caught.value, InvalidIdentifier)


def test_more_values_than_one_person_has_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'many.db'}"
    db = create_engine(url)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE users (id TEXT, email TEXT)"))
        conn.execute(text("INSERT INTO users VALUES (:i, 'all@example.org')"), [{"i": str(i)} for i in range(150)])
    db.dispose()
    with pytest.raises(ResolutionRefused, match=f"more than {MAX_VALUES}"):
        resolved(url, "all@example.org", USER_BY_EMAIL)
    dispose_engine(url)


def test_a_kind_the_request_carries_is_not_resolved(app: str) -> None:
    loaded = datamap(USER_BY_EMAIL, app)
    resolution = loaded.resolve(loaded.parse_subject({"email": "carl@example.org", "user_id": "77"}))
    assert dict(resolution.values) == {} and resolution.found() == set()


def test_an_unreachable_database_raises_without_a_value_or_the_url(tmp_path: Path) -> None:
    loaded = datamap(USER_BY_EMAIL, f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(ResolutionUnavailable, match="identity 'user-by-email' failed") as caught:
        loaded.resolve(loaded.parse_subject({"email": "carl@example.org"}))
    assert "carl" not in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_repr_never_shows_a_value(app: str) -> None:
    loaded = datamap(USER_BY_EMAIL, app)
    assert "12" not in repr(loaded.resolve(loaded.parse_subject({"email": "carl@example.org"})))


# -- planning and running with resolved values ------------------------------------------------------
def test_the_planner_skips_a_kind_nothing_resolved_naming_the_resolution(app: str) -> None:
    loaded = datamap(USER_BY_EMAIL + DEVICE_BY_USER, app)
    subject = loaded.parse_subject({"email": "carl@example.org"})
    tasks = {t.target: t for t in plan("r", loaded, subject, resolution=loaded.resolve(subject))}
    assert tasks["by-user"].status == "pending"
    assert tasks["by-device"].status == "skipped"
    assert tasks["by-device"].reason == "not erased: no device_id resolved via device-by-user"


def test_without_a_resolution_for_the_kind_the_old_reason_stands() -> None:
    loaded = datamap(USER_BY_EMAIL)
    tasks = {t.target: t for t in plan("r", loaded, loaded.parse_subject({"phone": "5"}))}
    assert tasks["by-user"].reason == "not erased: the request carries no user_id"


def test_one_subject_per_resolved_value_of_each_needed_kind() -> None:
    own = Subject({"email": "a@b.c"})
    derived = {"user_id": ("1", "2"), "device_id": ("x", "y", "z")}
    assert subjects_for(own, derived, {"email"}) == [own]
    assert [dict(s) for s in subjects_for(own, derived, {"user_id"})] == [
        {"email": "a@b.c", "user_id": "1"}, {"email": "a@b.c", "user_id": "2"}]
    assert len(subjects_for(own, derived, {"user_id", "device_id"})) == 6
    assert subjects_for(own, {"user_id": ()}, {"user_id"}) == []


# -- properties over outside input ------------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=40))
def test_any_stored_value_is_taken_exactly_as_a_request_value_would_be_or_refused(app: str, value: str) -> None:
    """Whatever the application's table holds, a resolved value is what normalise_value makes of it (the
    request validator and canonical form), or the filing is refused: never a raw, unchecked value."""
    db = create_engine(app)
    with db.begin() as conn:
        conn.execute(text("DELETE FROM devices"))
        conn.execute(text("INSERT INTO devices VALUES (:v, '12')"), {"v": value})
    db.dispose()
    loaded = datamap(DEVICE_BY_USER, app)
    try:
        expected = normalise_value("device_id", value)
    except InvalidIdentifier:
        with pytest.raises(ResolutionRefused):
            loaded.resolve(loaded.parse_subject({"user_id": "12"}))
    else:
        assert loaded.resolve(loaded.parse_subject({"user_id": "12"})).values["device_id"] == (expected,)


@settings(max_examples=200, deadline=None)
@given(item=st.dictionaries(st.sampled_from(["name", "from", "to", "url", "sql", "timeout_seconds", "x"]),
                            st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.text(max_size=5))),
                            max_size=7))
def test_any_identities_entry_loads_or_is_refused_with_a_data_map_error(item: dict[str, object]) -> None:
    import yaml

    text_ = yaml.safe_dump({"version": 1, "identifiers": ["email", "user_id"], "identities": [item],
                            "targets": [{"name": "t", "kind": "memory", "store": "s", "match": {"o": "{user_id}"}}]})
    try:
        DataMap.parse(text_)
    except DataMapError as exc:
        assert exc.errors
