"""The lake targets' handling of outside input: the subject's value typed for a column, written as a Delta
predicate literal, and the data map entries of the three kinds.

Property tests: any value a request may carry is either refused (PermanentError, nothing deleted) or
compared as exactly one literal; an integer column takes canonical decimal integers in range and nothing
else; a Delta delete by the literal removes exactly the rows equal to the value, never a look-alike.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.datamap import DataMap
from orchestrator.identifiers import InvalidIdentifier, Subject
from workers.targets.base import PermanentError
from workers.targets.delta import predicate, sql_literal
from workers.targets.parquet_files import typed_value

values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=24)


def request_value(text: str) -> str | None:
    """The value as a request would carry it, or None when the intake refuses it."""
    try:
        return Subject.parse({"user_id": text}, {"user_id": None})["user_id"]
    except InvalidIdentifier:
        return None


@given(values)
def test_integer_columns_take_canonical_decimals_only(text: str) -> None:
    """Accepted exactly when the text is a canonical decimal integer in int64's range; the int is its value."""
    canonical = text.isascii() and (text.lstrip("-").isdigit()) and str(int(text)) == text and text != "-0"
    if canonical and -(2**63) <= int(text) < 2**63:
        assert typed_value(text, pa.int64(), "owner") == int(text)
    else:
        with pytest.raises(PermanentError):
            typed_value(text, pa.int64(), "owner")


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_narrow_integer_columns_refuse_values_out_of_range(number: int) -> None:
    if -(2**31) <= number < 2**31:
        assert typed_value(str(number), pa.int32(), "n") == number
    else:
        with pytest.raises(PermanentError, match="out of the column's range"):
            typed_value(str(number), pa.int32(), "n")


def test_other_column_types_are_refused() -> None:
    for arrow_type in (pa.float64(), pa.timestamp("us"), pa.bool_(), pa.binary()):
        with pytest.raises(PermanentError, match="only integer and string columns"):
            typed_value("12", arrow_type, "c")


@given(values)
def test_a_string_literal_is_one_quoted_token(text: str) -> None:
    """Quotes doubled inside one pair of quotes; a backslash is refused (never an escape)."""
    if "\\" in text:
        with pytest.raises(PermanentError):
            sql_literal(text)
        return
    literal = sql_literal(text)
    assert literal.startswith("'") and literal.endswith("'")
    assert literal[1:-1].replace("''", "").count("'") == 0
    assert literal[1:-1].replace("''", "'") == text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values)
def test_a_delta_delete_removes_exactly_the_value(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    """On a real Delta table holding the value and its look-alikes, the delete by its literal removes
    exactly the value's rows (a hostile value deletes only itself, or is refused before any delete)."""
    value = request_value(text)
    if value is None:
        return
    uri = str(tmp_path_factory.mktemp("delta") / "t")
    alikes = sorted({value + "x", "x" + value, value[:-1] or "y", value.replace("'", "''") + "'", "12", "'"} - {value})
    owners = [value, value, *alikes]
    write_deltalake(uri, pa.table({"owner": owners, "n": list(range(len(owners)))}))
    DeltaTable(uri).delete(predicate({"owner": value}))
    left = DeltaTable(uri).to_pyarrow_table().column("owner").cast(pa.string()).to_pylist()
    assert sorted(left) == alikes


def test_the_three_kinds_load_from_a_data_map(tmp_path: Path) -> None:
    """delta, iceberg and parquet entries load with the map; a bad one is refused when it loads."""
    text = f"""
version: 1
identifiers: {{user_id: "[0-9]+"}}
targets:
  - {{name: manifest, kind: delta, uri: {tmp_path}/m, where: {{user_id: "{{user_id}}"}}}}
  - {{name: faces, kind: iceberg, catalog: {{uri: "sqlite:///{tmp_path}/c.db"}}, table: lake.faces,
      where: {{owner: "{{user_id}}"}}}}
  - {{name: events, kind: parquet, uri: "s3://lake/events/", endpoint_url: "http://127.0.0.1:9",
      where: {{user_id: "{{user_id}}"}}, after: [manifest]}}
"""
    assert [t.kind for t in DataMap.parse(text).targets] == ["delta", "iceberg", "parquet"]
    literal = text.replace('uri: ' + str(tmp_path) + '/m, where: {user_id: "{user_id}"}',
                           'uri: ' + str(tmp_path) + '/m, where: {user_id: "12"}')
    assert literal != text
    with pytest.raises(ValueError, match="placeholder"):
        DataMap.parse(literal)


def test_vendor_errors_are_translated_without_paths_or_values() -> None:
    """A commit conflict or an outage is retryable, anything else permanent; no message keeps the vendor's
    text (which quotes paths, keys and predicates)."""
    from deltalake.exceptions import CommitFailedError
    from pyiceberg.exceptions import CommitFailedException

    from workers.targets.base import RetryableError
    from workers.targets.parquet_files import vendor_errors

    cases = [(CommitFailedError("/lake/t/_delta_log/3.json: owner = '12'"), RetryableError),
             (CommitFailedException("owner=12"), RetryableError),
             (OSError("AWS Error NETWORK_CONNECTION during GetObject on s3://b/users/12/p"), RetryableError),
             (FileNotFoundError("/lake/users/12/part-0.parquet"), RetryableError),
             (PermissionError("/lake/users/12"), PermanentError),
             (ValueError("Invalid predicate owner = '12'"), PermanentError)]
    for exc, expected in cases:
        with pytest.raises(expected) as caught, vendor_errors("Delta target 'm': purge"):
            raise exc
        assert "12" not in str(caught.value) and "lake" not in str(caught.value)
