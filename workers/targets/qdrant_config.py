"""A qdrant target's entry in the data map: where the store is (a local-mode folder or a server URL and
its key), the collection, the selectors (``match``, ``ids_query``) and the opt-in server vacuum."""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from workers.targets.base import PermanentError, TargetConfig
from workers.targets.selectors import KeysQuery, check_match

FIELD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


class QdrantVacuum(BaseModel):
    """Server mode: make Qdrant's vacuum optimizer rebuild every segment that holds a deleted point."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_vectors: int = Field(100, ge=100, description="vacuum_min_vector_number set on the collection.")
    wait_seconds: float = Field(
        60.0, ge=0, le=3600, description="How long purge waits for the optimizer to finish before it "
        "reports the lower level 'invisible'."
    )


class QdrantConfig(TargetConfig):
    location: str | None = Field(None, description="Folder of a Qdrant local-mode store.")
    url: str | None = Field(None, description="Qdrant server URL (http:// or https://).")
    api_key: SecretStr | None = Field(None, description="Server API key (prefer api_key_env).")
    api_key_env: str | None = Field(None, description="Environment variable holding the server API key.")
    timeout: int = Field(30, ge=1, le=600, description="Seconds a server request may take.")
    collection: str = Field(
        validation_alias=AliasChoices("collection", "table"),
        description="Collection holding the subject's points (`table` is a synonym).",
    )
    match: dict[str, str] | None = Field(
        None, description="payload field -> templated value; a point matches when every field is equal."
    )
    ids_query: KeysQuery | None = Field(None, description="Point ids looked up in the application database.")
    vacuum: QdrantVacuum | None = Field(None, description="Server mode: trigger and await the vacuum optimizer.")

    template_fields: ClassVar[tuple[str, ...]] = ("match",)
    query_fields: ClassVar[tuple[str, ...]] = ("ids_query",)

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, name: str) -> str:
        if not COLLECTION_NAME.fullmatch(name) or ".." in name:
            raise ValueError("collection must be a plain name (letters, digits, _ . -)")
        return name

    @field_validator("location")
    @classmethod
    def _location_is_a_folder(cls, location: str | None) -> str | None:
        if location is None:
            return None
        if not location.strip() or location == ":memory:":
            raise ValueError("location must be a folder (':memory:' would be a new empty store in every worker)")
        return location

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url

    @field_validator("match")
    @classmethod
    def _match_names_the_subject(cls, match: dict[str, str] | None) -> dict[str, str] | None:
        return check_match(match, FIELD_NAME, "payload field", "payload key (letters, digits, _ . -)")

    @model_validator(mode="after")
    def _consistent(self) -> QdrantConfig:
        if (self.location is None) == (self.url is None):
            raise ValueError("give exactly one of location (local mode) or url (server)")
        if self.match is None and self.ids_query is None:
            raise ValueError("give match, ids_query or both")
        if self.location is not None and (self.api_key or self.api_key_env or self.vacuum):
            raise ValueError("api_key, api_key_env and vacuum apply to a server url, not to local mode")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give at most one of api_key or api_key_env")
        return self

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        """A dataset (``datasets:`` in the map) is found by a literal payload match, e.g.
        ``{match: {source: okcupid-2014}}``; it replaces ``match``, and ``ids_query`` is not used for it."""
        super().check_dataset_selector(selector)
        if set(selector) != {"match"}:
            raise ValueError("a qdrant dataset selector is {match: {field: value}} only")
        match = selector["match"]
        if not isinstance(match, dict):  # an empty one the base check refuses
            raise ValueError("a dataset match must name at least one payload field")
        for field, value in match.items():
            if not isinstance(field, str) or not FIELD_NAME.fullmatch(field):
                raise ValueError(f"match field {field!r} is not a plain payload key (letters, digits, _ . -)")
            if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
                raise ValueError(f"dataset match value for {field!r} must be a non-empty string or an integer")

    def server_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise PermanentError(f"Qdrant api_key_env: environment variable {self.api_key_env} is not set")
            return key
        return None

