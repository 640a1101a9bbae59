"""A lancedb target's entry in the data map: the local database directory, the table (``collection`` is a
synonym) and exactly one selector, ``match`` or ``ids_query`` with its ``id_column``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator, model_validator

from workers.targets.base import TargetConfig
from workers.targets.selectors import KeysQuery, check_match

COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TABLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _is_local(location: str) -> bool:
    """Only local databases: the erasure proof reads the table's files."""
    scheme = urlparse(location).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(location: str) -> Path:
    """The directory a local ``location`` (a path or file:// URI) names."""
    parsed = urlparse(location)
    raw = unquote(parsed.path) if parsed.scheme == "file" else location
    return Path(raw).expanduser().resolve()


class LanceDBConfig(TargetConfig):
    location: str = Field(min_length=1, description="Directory of the LanceDB database: a local path or file:// URI.")
    table: str = Field(description="Table holding the subject's rows (`collection` is accepted as a synonym).")
    match: dict[str, str] | None = Field(
        None, description="column -> templated value; a row matches when every column equals its value."
    )
    ids_query: KeysQuery | None = Field(
        None, description="Ids of the subject's rows from the application's database (first column)."
    )
    id_column: str = Field("id", description="Column the ids_query's ids are compared with.")

    template_fields: ClassVar[tuple[str, ...]] = ("match",)
    query_fields: ClassVar[tuple[str, ...]] = ("ids_query",)

    @model_validator(mode="before")
    @classmethod
    def _collection_is_table(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "collection" in data:
            if "table" in data:
                raise ValueError("give table or its synonym collection, not both")
            data = {("table" if k == "collection" else k): v for k, v in data.items()}
        return data

    @field_validator("location")
    @classmethod
    def _local_location(cls, location: str) -> str:
        if not _is_local(location):
            raise ValueError(
                "location must be a local directory (path or file:// URI): the erasure proof reads the table's files"
            )
        return location

    @field_validator("table")
    @classmethod
    def _plain_table(cls, table: str) -> str:
        if not TABLE.fullmatch(table) or ".." in table:
            raise ValueError("table must be a plain LanceDB table name (letters, digits, _ . -)")
        return table

    @field_validator("id_column")
    @classmethod
    def _plain_id_column(cls, column: str) -> str:
        if not COLUMN.fullmatch(column):
            raise ValueError("id_column must be a plain column name (letters, digits, _)")
        return column

    @field_validator("match")
    @classmethod
    def _match_is_safe(cls, match: dict[str, str] | None) -> dict[str, str] | None:
        return check_match(match, COLUMN, "column", "column name (letters, digits, _)")

    @model_validator(mode="after")
    def _one_selector(self) -> LanceDBConfig:
        if (self.match is None) == (self.ids_query is None):
            raise ValueError("give exactly one of match or ids_query")
        return self
