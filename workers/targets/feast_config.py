"""The Feast target's data-map entry: the repo, the entity whose rows belong to the subject, the templated
entity value and the views. Checked when the map loads, without importing Feast (the repo itself is loaded
and checked at run time: ``workers/targets/feast_repo.py``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.base import TargetConfig, require_placeholder


class FeastConfig(TargetConfig):
    repo_path: str = Field(min_length=1, description="Feast repository directory holding feature_store.yaml.")
    entity: str = Field(
        min_length=1, max_length=128, pattern=r"^[^\s{}]+$",
        description="Join key of the entity whose rows belong to the subject, e.g. user_id.",
    )
    value: str | None = Field(
        None, description='Templated entity value, e.g. "{user_id}"; "{<entity>}" when omitted.'
    )
    feature_views: tuple[str, ...] | None = Field(
        None, description="Feature views to purge; every view keyed by the entity when omitted."
    )

    template_fields: ClassVar[tuple[str, ...]] = ("value",)

    @model_validator(mode="before")
    @classmethod
    def _default_value(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("value") is None:
            entity = data.get("entity")
            if isinstance(entity, str) and entity.isidentifier():
                data = {**data, "value": "{" + entity + "}"}
        return data

    @field_validator("value")
    @classmethod
    def _value_names_the_subject(cls, value: str | None) -> str | None:
        if value is not None:
            require_placeholder("value", value)
        return value

    @field_validator("feature_views")
    @classmethod
    def _views_are_names(cls, views: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if views is None:
            return None
        if not views:
            raise ValueError("feature_views must name at least one view (omit it for every view of the entity)")
        if any(not v or not v.strip() for v in views):
            raise ValueError("feature_views must be non-empty names")
        if len(set(views)) != len(views):
            raise ValueError("feature_views names a view twice")
        return views

    @model_validator(mode="after")
    def _has_value(self) -> FeastConfig:
        if self.value is None:
            raise ValueError("entity is not a plain identifier name: give value: with an {identifier} placeholder")
        return self


def entity_value(config: FeastConfig, subject: Subject) -> str:
    """The subject's entity value as text: the entry's ``value`` template filled from its identifiers."""
    assert config.value is not None
    value: str = fill(config.value, subject)
    return value
