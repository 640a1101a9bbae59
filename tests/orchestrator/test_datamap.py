"""Loading the data map: everything checkable without a store is checked, every problem reported at once."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from orchestrator.datamap import DataMap, DataMapError, DeclaredStore
from orchestrator.identifiers import InvalidIdentifier

# The SPEC's example map, verbatim: every kind in it (s3, feast, qdrant, mlflow) has an adapter.
SPEC_EXAMPLE = """\
version: 1
identifiers: [user_id, email]          # kinds a request may carry; or a mapping kind -> regex
targets:
  - name: profile-photos
    kind: s3
    endpoint_url: http://127.0.0.1:9000   # optional; AWS when absent
    bucket: photos
    prefix: "users/{user_id}/"            # every object under it belongs to the subject
  - name: uploads                         # keys looked up in the application's database
    kind: s3
    bucket: uploads
    keys_query:
      url: postgresql://app@db/app
      sql: "SELECT object_key FROM uploads WHERE owner_id = :user_id"   # bound, never formatted
  - name: user-features
    kind: feast
    repo_path: ./feature_repo
    entity: user_id                       # join key; value: "{user_id}" when the names differ
    feature_views: [user_profile_stats]
  - name: face-embeddings
    kind: qdrant                          # or lancedb (`table` is accepted as a synonym of `collection`)
    location: ./vectors                   # or url:
    collection: faces
    match: {subject_id: "{user_id}"}
  - name: face-models
    kind: mlflow
    tracking_uri: sqlite:///mlruns.db
    action: quarantine                    # or delete
    after: [profile-photos, face-embeddings]
    max_items: 20                         # blast radius: more than this waits for an admin's approval
datasets:                                 # whole sources, for `lethe submit --dataset NAME`
  okcupid-2014:                           # per target name, the selector that finds the source's items
    profile-photos: {prefix: "sources/okcupid-2014/"}
    face-embeddings: {match: {source: okcupid-2014}}
    face-models: {dataset_name: okcupid-2014}
stores:                                   # personal data lethe does not erase, and why (check-map --strict)
  - {name: billing-archive, not_erased: "kept 10 years by tax law (Art. 17(3)(b))"}
"""

# The same map with the not-yet-implemented kinds replaced by in-memory stand-ins.
ADAPTED_EXAMPLE = """\
version: 1
identifiers: [user_id, email]
targets:
  - name: face-models
    kind: memory
    store: models
    match: {owner: "{user_id}"}
    after: [profile-photos, face-embeddings]
    max_items: 20
  - name: profile-photos
    kind: s3
    endpoint_url: http://127.0.0.1:9000
    bucket: photos
    prefix: "users/{user_id}/"
  - name: uploads
    kind: s3
    bucket: uploads
    keys_query:
      url: postgresql://app@db/app
      sql: "SELECT object_key FROM uploads WHERE owner_id = :user_id"
  - name: user-features
    kind: memory
    store: features
    match: {user_id: "{user_id}"}
  - name: face-embeddings
    kind: memory
    store: vectors
    match: {subject_id: "{user_id}"}
datasets:
  okcupid-2014:
    profile-photos: {prefix: "sources/okcupid-2014/"}
    face-embeddings: {match: {source: okcupid-2014}}
    face-models: {match: {dataset: okcupid-2014}}
stores:
  - {name: billing-archive, not_erased: "kept 10 years by tax law (Art. 17(3)(b))"}
"""


def memory_target(name: str, after: list[str] | None = None, value: str = "{user_id}") -> str:
    line = f"  - {{name: {name}, kind: memory, store: s, match: {{owner: '{value}'}}"
    if after is not None:
        line += f", after: [{', '.join(after)}]"
    return line + "}\n"


def map_text(*targets: str, identifiers: str = "[user_id]", extra: str = "") -> str:
    return f"version: 1\nidentifiers: {identifiers}\ntargets:\n" + "".join(targets) + extra


def errors_of(text: str) -> list[str]:
    with pytest.raises(DataMapError) as info:
        DataMap.parse(text)
    assert info.value.errors, "a DataMapError must list its problems"
    return info.value.errors


def one_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


# --- the SPEC example ------------------------------------------------------------------------------------


def test_adapted_spec_example_loads() -> None:
    """The SPEC example, with memory stand-ins for feast/qdrant/mlflow, loads with every section."""
    dm = DataMap.parse(ADAPTED_EXAMPLE)
    assert set(dm.identifiers) == {"user_id", "email"}
    assert all(p is None for p in dm.identifiers.values())
    assert {t.name for t in dm.targets} == {
        "face-models", "profile-photos", "uploads", "user-features", "face-embeddings"
    }
    photos = dm.target("profile-photos")
    assert photos.kind == "s3"
    assert photos.prefix == "users/{user_id}/"  # type: ignore[attr-defined]
    assert photos.endpoint_url == "http://127.0.0.1:9000"  # type: ignore[attr-defined]
    assert dm.target("face-models").max_items == 20
    assert dm.target("face-models").after == ("profile-photos", "face-embeddings")
    assert dm.datasets["okcupid-2014"]["profile-photos"] == {"prefix": "sources/okcupid-2014/"}
    assert dm.stores == (DeclaredStore("billing-archive", "kept 10 years by tax law (Art. 17(3)(b))"),)
    assert dm.strict_problems() == []
    assert dm.text == ADAPTED_EXAMPLE


def test_adapted_spec_example_orders_targets_after_their_dependencies() -> None:
    """face-models, declared first, comes after profile-photos and face-embeddings in the loaded order."""
    names = [t.name for t in DataMap.parse(ADAPTED_EXAMPLE).targets]
    assert names.index("face-models") > names.index("profile-photos")
    assert names.index("face-models") > names.index("face-embeddings")


def test_adapted_spec_example_required_identifiers() -> None:
    """Prefix placeholders and keys_query :params both count as the identifiers a target needs."""
    dm = DataMap.parse(ADAPTED_EXAMPLE)
    assert dm.target("profile-photos").required_identifiers() == {"user_id"}
    assert dm.target("uploads").required_identifiers() == {"user_id"}
    assert dm.target("face-embeddings").required_identifiers() == {"user_id"}


def test_target_lookup_of_unknown_name_raises_key_error() -> None:
    """DataMap.target() raises KeyError for a name the map does not have."""
    with pytest.raises(KeyError):
        DataMap.parse(ADAPTED_EXAMPLE).target("nope")


def test_verbatim_spec_example_loads_with_its_mlflow_target() -> None:
    """The SPEC example loads as written: face-models is an mlflow target and its dataset selector is valid."""
    dm = DataMap.parse(SPEC_EXAMPLE)  # feast: checked without loading the repo
    models = dm.target("face-models")
    assert models.kind == "mlflow"
    assert (models.tracking_uri, models.action) == ("sqlite:///mlruns.db", "quarantine")  # type: ignore[attr-defined]
    assert models.after == ("profile-photos", "face-embeddings") and models.max_items == 20
    assert dm.datasets["okcupid-2014"]["face-models"] == {"dataset_name": "okcupid-2014"}


def test_verbatim_spec_example_qdrant_entry_validates() -> None:
    """The SPEC example's qdrant entry (location, collection, match) is a valid QdrantConfig."""
    import yaml

    from workers.targets.qdrant import QdrantConfig

    entry = next(t for t in yaml.safe_load(SPEC_EXAMPLE)["targets"] if t["name"] == "face-embeddings")
    config = QdrantConfig.model_validate(entry)
    assert (config.location, config.collection, config.match) == ("./vectors", "faces", {"subject_id": "{user_id}"})
    assert config.required_identifiers() == {"user_id"}


def test_verbatim_spec_example_feast_entry_validates() -> None:
    """The SPEC example's feast entry is a valid FeastConfig; value defaults to the entity's placeholder."""
    import yaml

    from workers.targets.feast import FeastConfig

    entry = next(t for t in yaml.safe_load(SPEC_EXAMPLE)["targets"] if t["name"] == "user-features")
    config = FeastConfig.model_validate(entry)
    assert (config.repo_path, config.entity, config.feature_views) == (
        "./feature_repo", "user_id", ("user_profile_stats",)
    )
    assert config.value == "{user_id}"
    assert config.required_identifiers() == {"user_id"}


def test_feast_value_of_undeclared_kind_is_refused() -> None:
    """A feast target whose value: names an identifier the map does not declare is refused."""
    error = one_error(map_text("  - {name: f, kind: feast, repo_path: ./r, entity: customer_id}\n"))
    assert "undeclared identifiers: customer_id" in error


def test_unknown_kind_lists_known_kinds() -> None:
    """A kind nothing resembles is refused, listing the kinds that exist."""
    error = one_error(map_text("  - {name: a, kind: hopsworks, repo_path: ./r}\n"))
    assert "no target adapter for kind 'hopsworks'" in error
    assert "s3" in error
    assert "memory" in error


def test_typo_kind_suggests_the_close_kind() -> None:
    """A near-miss kind like 's3x' or 'memroy' gets a 'did you mean' suggestion."""
    assert "did you mean 's3'" in one_error(map_text("  - {name: a, kind: s3x, bucket: bkt}\n"))
    assert "did you mean 'memory'" in one_error(map_text("  - {name: a, kind: memroy, store: s}\n"))


@pytest.mark.parametrize("kind", ["s4", "S3"])
def test_one_letter_typo_of_s3_suggests_s3(kind: str) -> None:
    """A one-character typo of 's3' (s4, S3) is refused with "did you mean 's3'"."""
    error = one_error(map_text(f"  - {{name: a, kind: {kind}, bucket: bkt, prefix: 'u/{{user_id}}/'}}\n"))
    assert "no target adapter" in error
    assert "did you mean 's3'" in error


def test_missing_kind_is_refused() -> None:
    """A target without a kind is refused with "kind is required"."""
    assert "kind is required" in one_error(map_text("  - {name: a, store: s, match: {o: '{user_id}'}}\n"))


# --- after / ordering --------------------------------------------------------------------------------------


def test_after_unknown_name_is_refused() -> None:
    """`after` naming a target the map does not have is refused, naming both targets."""
    error = one_error(map_text(memory_target("a", after=["ghost"])))
    assert "'a'" in error
    assert "unknown target 'ghost'" in error


def test_after_cycle_is_refused() -> None:
    """Targets that wait for each other in a cycle are refused with a message mentioning the cycle."""
    error = one_error(map_text(
        memory_target("a", after=["c"]), memory_target("b", after=["a"]), memory_target("c", after=["b"])
    ))
    assert "cycle" in error
    for name in "abc":
        assert name in error


def test_self_dependency_is_refused() -> None:
    """A target that waits for itself is refused."""
    errors = errors_of(map_text(memory_target("a", after=["a"])))
    assert any("waits for itself" in e for e in errors), errors


def test_after_as_a_string_is_refused() -> None:
    """`after` must be a list of names; a bare string is refused rather than split into characters."""
    errors = errors_of(map_text(memory_target("a"), "  - {name: b, kind: memory, store: s, "
                                "match: {o: '{user_id}'}, after: a}\n"))
    assert any(e.startswith("target 'b': after") for e in errors), errors


def test_targets_come_back_in_topological_order() -> None:
    """A chain declared backwards (c after b after a) loads as a, b, c."""
    dm = DataMap.parse(map_text(
        memory_target("c", after=["b"]), memory_target("b", after=["a"]), memory_target("a")
    ))
    assert [t.name for t in dm.targets] == ["a", "b", "c"]


def test_diamond_order_respects_every_edge() -> None:
    """In a diamond (d after b and c, both after a), every target follows all the ones it waits for."""
    dm = DataMap.parse(map_text(
        memory_target("d", after=["b", "c"]),
        memory_target("c", after=["a"]),
        memory_target("b", after=["a"]),
        memory_target("a"),
        memory_target("lone"),
    ))
    position = {t.name: i for i, t in enumerate(dm.targets)}
    assert len(position) == 5
    for t in dm.targets:
        for dep in t.after:
            assert position[dep] < position[t.name]


def test_order_is_deterministic() -> None:
    """Parsing the same map twice gives the same target order."""
    text = map_text(*(memory_target(n) for n in "qwertyuiop"), memory_target("z", after=["q", "p"]))
    first = [t.name for t in DataMap.parse(text).targets]
    for _ in range(5):
        assert [t.name for t in DataMap.parse(text).targets] == first


def test_duplicate_target_names_are_refused() -> None:
    """Two targets with the same name are refused."""
    error = one_error(map_text(memory_target("a"), memory_target("a")))
    assert "'a'" in error
    assert "duplicate" in error


@pytest.mark.parametrize("name", ["", "a/b", "-leading-dash", "has space", "x" * 64])
def test_bad_target_names_are_refused(name: str) -> None:
    """Target names are short plain names: empty, slashes, spaces, leading dash or too long are refused."""
    target = f"  - {{name: '{name}', kind: memory, store: s, match: {{o: '{{user_id}}'}}}}\n"
    errors = errors_of(map_text(target))
    assert any("name" in e for e in errors), errors


# --- S3 selectors ----------------------------------------------------------------------------------------


def s3_target(**fields: str) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return f"  - {{name: t, kind: s3, bucket: bkt, {body}}}\n"


def test_s3_prefix_without_placeholder_is_refused() -> None:
    """An S3 prefix with no {identifier} would match every subject and is refused."""
    error = one_error(map_text(s3_target(prefix="'users/'")))
    assert "placeholder" in error
    assert error.startswith("target 't': prefix")


def test_s3_prefix_not_ending_with_slash_is_refused() -> None:
    """An S3 prefix must end at '/', so subject 12 never matches users/123."""
    error = one_error(map_text(s3_target(prefix="'users/{user_id}'")))
    assert "must end at a separator" in error


def test_s3_prefix_with_bad_placeholder_is_refused() -> None:
    """An S3 prefix with an index/attribute placeholder is refused at load."""
    error = one_error(map_text(s3_target(prefix="'users/{user_id[0]}/'")))
    assert "bad placeholder" in error


def test_s3_with_both_prefix_and_keys_query_is_refused() -> None:
    """Giving both prefix and keys_query is refused."""
    error = one_error(map_text(s3_target(
        prefix="'users/{user_id}/'",
        keys_query="{url: 'sqlite://', sql: 'SELECT k FROM t WHERE u = :user_id'}",
    )))
    assert "exactly one of prefix or keys_query" in error


def test_s3_with_neither_prefix_nor_keys_query_is_refused() -> None:
    """Giving neither prefix nor keys_query is refused."""
    error = one_error(map_text("  - {name: t, kind: s3, bucket: bkt}\n"))
    assert "exactly one of prefix or keys_query" in error


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM uploads WHERE owner_id = :user_id",
        "UPDATE uploads SET k = NULL WHERE owner_id = :user_id",
        "DROP TABLE uploads",
        "INSERT INTO uploads VALUES (:user_id)",
    ],
)
def test_keys_query_must_be_a_select(sql: str) -> None:
    """keys_query.sql that is not a SELECT is refused."""
    error = one_error(map_text(s3_target(keys_query=f"{{url: 'sqlite://', sql: '{sql}'}}")))
    assert "must be a SELECT" in error


@pytest.mark.parametrize(
    "sql",
    [
        "WITH d AS (DELETE FROM uploads WHERE owner_id = :user_id RETURNING object_key) "
        "SELECT object_key FROM d",
        "SELECT object_key FROM uploads WHERE owner_id = :user_id; DELETE FROM uploads",
    ],
    ids=["delete-cte", "second-statement"],
)
def test_keys_query_hidden_writes_are_refused(sql: str) -> None:
    """keys_query.sql that writes through a CTE or a second statement is refused like any non-SELECT."""
    error = one_error(map_text(s3_target(keys_query=f"{{url: 'sqlite://', sql: '{sql}'}}")))
    assert "single statement" in error or "must only read" in error


def test_keys_query_without_parameter_is_refused() -> None:
    """keys_query.sql with no :identifier parameter would select the same keys for every subject: refused."""
    error = one_error(map_text(s3_target(keys_query="{url: 'sqlite://', sql: 'SELECT object_key FROM uploads'}")))
    assert "needs a :kind parameter" in error


def test_keys_query_with_format_placeholder_is_refused() -> None:
    """keys_query.sql takes bound :params, never {placeholders} formatted into the text."""
    error = one_error(map_text(s3_target(
        keys_query="{url: 'sqlite://', sql: \"SELECT k FROM t WHERE u = '{user_id}'\"}"
    )))
    assert "bound parameters" in error


def test_keys_query_params_are_required_identifiers() -> None:
    """Every :param of keys_query.sql is an identifier the target needs."""
    dm = DataMap.parse(map_text(
        s3_target(keys_query="{url: 'sqlite://', sql: 'SELECT k FROM t WHERE u = :user_id OR e = :email'}"),
        identifiers="[user_id, email]",
    ))
    assert dm.target("t").required_identifiers() == {"user_id", "email"}


def test_keys_query_param_of_undeclared_kind_is_refused() -> None:
    """A keys_query :param that is not a declared identifier kind is refused."""
    error = one_error(map_text(s3_target(
        keys_query="{url: 'sqlite://', sql: 'SELECT k FROM t WHERE u = :tenant_id'}"
    )))
    assert "undeclared identifiers: tenant_id" in error


def test_placeholder_of_undeclared_kind_is_refused() -> None:
    """A prefix/match placeholder naming a kind the map does not declare is refused."""
    assert "undeclared identifiers: tenant" in one_error(map_text(s3_target(prefix="'t/{tenant}/'")))
    assert "undeclared identifiers: email" in one_error(map_text(memory_target("m", value="{email}")))


def test_memory_match_with_bad_placeholder_is_refused() -> None:
    """A conversion placeholder in a memory target's match is refused at load."""
    assert "bad placeholder" in one_error(map_text(memory_target("m", value="{user_id!r}")))


def test_unknown_target_field_is_refused() -> None:
    """A misspelt target field (extra key) is refused rather than ignored."""
    errors = errors_of(map_text(s3_target(prefix="'users/{user_id}/'", prefx="'x/{user_id}/'")))
    assert any("prefx" in e for e in errors), errors


# --- top level -------------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_refused() -> None:
    """An unknown top-level key is refused, named in the error."""
    error = one_error(map_text(memory_target("a"), extra="extras: {}\n"))
    assert "unknown top-level keys: extras" in error


@pytest.mark.parametrize("version", ["2", "0", "'1'", "null"])
def test_version_other_than_1_is_refused(version: str) -> None:
    """version must be exactly the integer 1."""
    text = map_text(memory_target("a")).replace("version: 1", f"version: {version}")
    assert one_error(text) == "version must be 1"


def test_missing_version_is_refused() -> None:
    """A map without a version is refused."""
    text = map_text(memory_target("a")).replace("version: 1\n", "")
    assert one_error(text) == "version must be 1"


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n", "42\n"])
def test_map_that_is_not_a_mapping_is_refused(text: str) -> None:
    """An empty document, a list or a scalar is refused as not a mapping."""
    assert "must be a YAML mapping" in one_error(text)


def test_invalid_yaml_is_a_data_map_error() -> None:
    """Broken YAML raises DataMapError, not a yaml exception."""
    assert "not valid YAML" in one_error("version: 1\ntargets: [\n")


@pytest.mark.parametrize("identifiers", ["[]", "{}", "user_id", "null"])
def test_identifiers_must_be_non_empty_list_or_mapping(identifiers: str) -> None:
    """identifiers must be a non-empty list of kinds or a mapping kind -> regex."""
    errors = errors_of(map_text(s3_target(prefix="'users/x/{user_id}/'"), identifiers=identifiers))
    assert any("identifiers must be" in e for e in errors), errors


def test_identifier_kind_must_be_a_plain_name() -> None:
    """An identifier kind that is not a plain name (e.g. 'user-id' or 12) is refused."""
    errors = errors_of(map_text(memory_target("a"), identifiers="[user_id, user-id, 12]"))
    assert any("'user-id'" in e for e in errors), errors
    assert any("12" in e for e in errors), errors


def test_identifiers_mapping_with_regex() -> None:
    """identifiers as a mapping compiles each regex; parse_subject then requires a whole match."""
    dm = DataMap.parse(map_text(memory_target("a"), identifiers="{user_id: '[0-9]+', email: null}"))
    pattern = dm.identifiers["user_id"]
    assert pattern is not None
    assert pattern.pattern == "[0-9]+"
    assert dm.identifiers["email"] is None
    assert dm.parse_subject({"user_id": "12"})["user_id"] == "12"
    with pytest.raises(InvalidIdentifier):
        dm.parse_subject({"user_id": "12a"})
    assert dm.parse_subject({"email": "anything@example.com"})["email"] == "anything@example.com"


def test_identifiers_bad_regex_is_refused() -> None:
    """An identifier regex that does not compile is refused, naming the kind."""
    errors = errors_of(map_text(memory_target("a"), identifiers="{user_id: '[0-9'}"))
    assert any(e.startswith("identifier user_id: bad regex") for e in errors), errors


def test_parse_subject_refuses_undeclared_kind() -> None:
    """DataMap.parse_subject refuses a kind the map does not declare."""
    dm = DataMap.parse(map_text(memory_target("a")))
    with pytest.raises(InvalidIdentifier, match="unknown identifier kind 'email'"):
        dm.parse_subject({"email": "a@b.c"})


@pytest.mark.parametrize("targets", ["[]", "null", "{a: 1}"])
def test_targets_must_be_a_non_empty_list(targets: str) -> None:
    """targets must be a non-empty list."""
    text = f"version: 1\nidentifiers: [user_id]\ntargets: {targets}\n"
    assert "targets must be a non-empty list" in one_error(text)


def test_target_that_is_not_a_mapping_is_refused() -> None:
    """A target entry that is not a mapping is refused."""
    errors = errors_of(map_text(memory_target("a"), "  - just-a-name\n"))
    assert any("targets[1] must be a mapping" in e for e in errors), errors


# --- datasets and stores ---------------------------------------------------------------------------------


def test_dataset_naming_unknown_target_is_refused() -> None:
    """A dataset selector for a target the map does not have is refused."""
    error = one_error(map_text(
        memory_target("a"), extra="datasets:\n  ds1:\n    ghost: {match: {source: ds1}}\n"
    ))
    assert "dataset 'ds1'" in error
    assert "unknown target 'ghost'" in error


def test_dataset_selector_must_be_a_mapping() -> None:
    """A dataset's per-target selector must be a mapping."""
    error = one_error(map_text(memory_target("a"), extra="datasets:\n  ds1:\n    a: just-a-string\n"))
    assert "must be a mapping" in error


def test_dataset_must_name_targets() -> None:
    """A dataset with no target selectors is refused."""
    assert "must map target names" in one_error(map_text(memory_target("a"), extra="datasets:\n  ds1: {}\n"))


def test_datasets_load() -> None:
    """A valid dataset loads as name -> target -> selector."""
    extra = "datasets:\n  ds1:\n    a: {match: {source: ds1}}\n"
    dm = DataMap.parse(map_text(memory_target("a"), extra=extra))
    assert dict(dm.datasets) == {"ds1": {"a": {"match": {"source": "ds1"}}}}


def test_a_dataset_selector_holding_a_query_is_refused() -> None:
    """keys_query in a dataset selector is refused when the map loads: its SQL looks up one subject's keys
    (bound by the subject's identifiers, which a dataset request has none of) and the selector is stored
    as given, never parsed into a checked query, so the task could only fail. No SQL check is skipped."""
    s3 = ("  - {name: photos, kind: s3, bucket: uploads, prefix: 'users/{user_id}/'}\n"
          "  - {name: keyed, kind: s3, bucket: uploads, keys_query: {url: 'sqlite:///app.db', "
          "sql: 'SELECT k FROM photos WHERE owner = :user_id'}}\n")
    for target, sql in (("photos", "SELECT pg_read_file('/etc/hostname')"), ("keyed", "SELECT k FROM photos")):
        extra = f"datasets:\n  ds1:\n    {target}: {{keys_query: {{url: 'sqlite:///app.db', sql: \"{sql}\"}}}}\n"
        error = one_error(map_text(s3, extra=extra))
        assert "keys_query is a per-subject lookup" in error and "dataset 'ds1'" in error, error
    extra = "datasets:\n  ds1:\n    photos: {prefix: 'sources/ds1/'}\n"
    assert DataMap.parse(map_text(s3, extra=extra)).datasets["ds1"]["photos"] == {"prefix": "sources/ds1/"}


@pytest.mark.parametrize("setting", ["name: other", "kind: memory", "after: [b]", "max_items: 100000",
                                     "backups: {retention_days: 1}", "replica_of: b"])
def test_a_dataset_selector_cannot_set_the_targets_own_settings(setting: str) -> None:
    """A dataset names where its data is; it cannot rename the target, reorder it or lift its blast radius."""
    extra = f"datasets:\n  ds1:\n    a: {{match: {{source: ds1}}, {setting}}}\n"
    error = one_error(map_text(memory_target("a") + memory_target("b"), extra=extra))
    assert "is the target's own setting, not a selector" in error and "dataset 'ds1'" in error, error


def test_strict_problems_lists_uncovered_stores_only() -> None:
    """strict_problems() names stores with neither a same-named target nor a not_erased reason."""
    dm = DataMap.parse(map_text(memory_target("crm"), extra=textwrap.dedent("""\
        stores:
          - {name: crm}
          - {name: billing-archive, not_erased: "tax law"}
          - {name: forgotten-backups}
          - {name: old-logs, not_erased: ""}
        """)))
    problems = dm.strict_problems()
    assert len(problems) == 2
    assert "forgotten-backups" in problems[0]
    assert "old-logs" in problems[1]
    assert not any("crm" in p or "billing-archive" in p for p in problems)


def test_strict_problems_empty_without_stores() -> None:
    """A map with no stores section has no strict problems."""
    assert DataMap.parse(map_text(memory_target("a"))).strict_problems() == []


@pytest.mark.parametrize("stores", ["{a: b}", "[just-a-name]", "[{not_erased: x}]"])
def test_malformed_stores_are_refused(stores: str) -> None:
    """stores must be a list of mappings with a name."""
    errors = errors_of(map_text(memory_target("a"), extra=f"stores: {stores}\n"))
    assert any(e.startswith("stores") for e in errors), errors


# --- digest, errors, load --------------------------------------------------------------------------------


def test_digest_is_sha256_of_the_text() -> None:
    """DataMap.digest is the hex SHA-256 of the map's exact text."""
    dm = DataMap.parse(ADAPTED_EXAMPLE)
    assert dm.digest == hashlib.sha256(ADAPTED_EXAMPLE.encode("utf-8")).hexdigest()


def test_digest_changes_with_any_text_change() -> None:
    """A comment-only change gives a different digest (the digest covers the text, not the meaning)."""
    assert DataMap.parse(ADAPTED_EXAMPLE).digest != DataMap.parse(ADAPTED_EXAMPLE + "# note\n").digest


def test_all_problems_are_reported_at_once() -> None:
    """One DataMapError lists every problem of a map, not just the first."""
    text = textwrap.dedent("""\
        version: 2
        identifiers: [user_id]
        surprise: true
        targets:
          - {name: a, kind: memory, store: s, match: {o: '{user_id}'}, after: [b]}
          - {name: b, kind: memory, store: s, match: {o: '{user_id}'}, after: [a]}
          - {name: c, kind: s4, bucket: bkt}
          - {name: d, kind: s3, bucket: bkt, prefix: 'users/{user_id}'}
          - {name: e, kind: memory, store: s, match: {o: '{email}'}}
          - {name: f, kind: memory, store: s, match: {o: '{user_id}'}, after: [ghost]}
        datasets:
          ds: {nowhere: {prefix: x/}}
        """)
    with pytest.raises(DataMapError) as info:
        DataMap.parse(text, source="broken.yaml")
    errors = info.value.errors
    expected = [
        "unknown top-level keys: surprise",
        "version must be 1",
        "no target adapter for kind 's4'",
        "must end at a separator",
        "undeclared identifiers: email",
        "unknown target 'ghost'",
        "cycle",
        "dataset 'ds': unknown target 'nowhere'",
    ]
    for fragment in expected:
        assert sum(fragment in e for e in errors) == 1, (fragment, errors)
    assert len(errors) == len(expected)
    message = str(info.value)
    assert message.startswith("broken.yaml is invalid:")
    for e in errors:
        assert e in message


def test_data_map_error_is_a_value_error() -> None:
    """DataMapError is a ValueError carrying its list of errors."""
    err = DataMapError(["one", "two"], source="m.yaml")
    assert isinstance(err, ValueError)
    assert err.errors == ["one", "two"]
    assert str(err) == "m.yaml is invalid:\n  - one\n  - two"


def test_load_reads_a_file(tmp_path: Path) -> None:
    """DataMap.load parses the file and records its text and digest."""
    path = tmp_path / "map.yaml"
    path.write_text(ADAPTED_EXAMPLE, encoding="utf-8")
    dm = DataMap.load(path)
    assert dm.text == ADAPTED_EXAMPLE
    assert dm.digest == hashlib.sha256(ADAPTED_EXAMPLE.encode()).hexdigest()
    assert DataMap.load(str(path)).digest == dm.digest


def test_load_missing_file_is_a_data_map_error(tmp_path: Path) -> None:
    """A missing file gives a DataMapError naming the path, not an OSError."""
    path = tmp_path / "missing.yaml"
    with pytest.raises(DataMapError) as info:
        DataMap.load(path)
    assert not isinstance(info.value, OSError)
    assert str(path) in str(info.value)
    assert len(info.value.errors) == 1


def test_load_directory_is_a_data_map_error(tmp_path: Path) -> None:
    """Loading a directory gives a DataMapError, not an IsADirectoryError."""
    with pytest.raises(DataMapError):
        DataMap.load(tmp_path)


def test_load_non_utf8_file_is_a_data_map_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 gives a DataMapError, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(DataMapError) as info:
        DataMap.load(path)
    assert not isinstance(info.value, UnicodeDecodeError)
    assert "UTF-8" in str(info.value)


def test_load_reports_source_path_for_invalid_map(tmp_path: Path) -> None:
    """Errors of a loaded file name the file as their source."""
    path = tmp_path / "bad.yaml"
    path.write_text("version: 3\n", encoding="utf-8")
    with pytest.raises(DataMapError) as info:
        DataMap.load(path)
    assert str(info.value).startswith(f"{path} is invalid:")
