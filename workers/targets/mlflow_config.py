"""The MLflow target's data-map entry: where the tracking store is, what to do with the models trained on a
subject's datasets, and the dataset selector (``lethe submit --dataset``). Checked when the map loads, without
importing MLflow. The target itself: ``workers/targets/mlflow.py``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from workers.targets.base import TargetConfig
from workers.targets.mlflow_api import DATABASE_SCHEMES, SERVER_SCHEMES, uri_scheme


class MLflowConfig(TargetConfig):
    tracking_uri: str = Field(min_length=1, description="MLflow tracking URI: database, file store or server.")
    registry_uri: str | None = Field(None, description="Model registry URI when it differs from tracking_uri.")
    action: Literal["quarantine", "delete"] = Field(
        description="quarantine: remove aliases and tag the versions; delete: delete versions, runs, artifacts."
    )
    registered_model: str | None = Field(
        None, min_length=1, description="Only act on this registered model's versions."
    )
    dataset_name: str | None = Field(
        None, description="Dataset scope only (a `datasets:` selector): every model trained on any build of it."
    )
    backend_store_uri: str | None = Field(
        None, description="With an http(s) tracking_uri and delete: the server's backend store (database URI or "
                          "file store), so lethe removes the soft-deleted rows itself, as `mlflow gc` does."
    )

    @field_validator("dataset_name")
    @classmethod
    def _dataset_name_is_a_dataset_selector(cls, name: str | None) -> str | None:
        # The worker puts a dataset's selector in with model_copy (no validation); in a target's own entry it
        # would widen every subject's erasure to the whole dataset.
        if name is not None:
            raise ValueError("dataset_name belongs in a `datasets:` selector (lethe submit --dataset), "
                             "not in the target's entry")
        return name

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        """A dataset (``datasets:`` in the map) is found by the name runs logged it under:
        ``{dataset_name: okcupid-2014}`` reaches the models trained on any build (digest) of it."""
        super().check_dataset_selector(selector)
        if set(selector) != {"dataset_name"}:
            raise ValueError("an mlflow dataset selector is {dataset_name: NAME} only")
        name = selector["dataset_name"]
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise ValueError("dataset_name must be a non-empty, printable string")

    @field_validator("tracking_uri", "registry_uri", "backend_store_uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        if not uri.strip():
            raise ValueError("must not be empty")
        scheme = uri_scheme(uri)
        if scheme not in DATABASE_SCHEMES | SERVER_SCHEMES | {"", "file"}:
            raise ValueError(
                f"unsupported MLflow URI scheme {scheme!r} (use a database URI such as sqlite:///mlruns.db, "
                "a file store path, or an http(s) tracking server)"
            )
        return uri

    @model_validator(mode="after")
    def _backend_store_is_for_delete_through_a_server(self) -> MLflowConfig:
        if self.backend_store_uri is None:
            return self
        if self.action != "delete" or uri_scheme(self.tracking_uri) not in SERVER_SCHEMES:
            raise ValueError("backend_store_uri is for action delete through an http(s) tracking server "
                             "(a database tracking_uri is the backend store already)")
        if uri_scheme(self.backend_store_uri) in SERVER_SCHEMES:
            raise ValueError("backend_store_uri is the tracking server's database URI or file store, "
                             "not an http(s) address")
        return self

    @property
    def through_server(self) -> bool:
        return uri_scheme(self.tracking_uri) in SERVER_SCHEMES
