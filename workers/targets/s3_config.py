"""The S3 target's data-map entry (bucket, endpoint, one selector: a templated prefix or a keys query) and
the shared boto3 client. Checked when the map loads without importing boto3 (the client is built on first
use); ``workers/targets/s3.py`` still exports both."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from workers.targets.base import TargetConfig, require_placeholder
from workers.targets.selectors import KeysQuery


class S3Config(TargetConfig):
    bucket: str = Field(min_length=3, description="Bucket holding the subject's objects.")
    endpoint_url: str | None = Field(None, description="S3 endpoint; AWS when absent.")
    region: str | None = Field(None, description="Region name for the client.")
    prefix: str | None = Field(None, description="Templated key prefix ending at '/'.")
    keys_query: KeysQuery | None = Field(None, description="Exact keys from the application's database.")

    template_fields: ClassVar[tuple[str, ...]] = ("prefix",)
    query_fields: ClassVar[tuple[str, ...]] = ("keys_query",)

    @field_validator("prefix")
    @classmethod
    def _prefix_is_safe(cls, prefix: str | None) -> str | None:
        if prefix is None:
            return None
        require_placeholder("prefix", prefix)
        if not prefix.endswith("/"):
            raise ValueError("prefix must end at a separator '/', so subject 12 never matches 123")
        return prefix

    @model_validator(mode="after")
    def _one_selector(self) -> S3Config:
        if (self.prefix is None) == (self.keys_query is None):
            raise ValueError("give exactly one of prefix or keys_query")
        return self

    def check_dataset_selector(self, selector: dict[str, Any]) -> None:
        super().check_dataset_selector(selector)
        prefix = selector.get("prefix")
        if prefix is not None and (not isinstance(prefix, str) or len(prefix) < 2 or not prefix.endswith("/")):
            raise ValueError("a dataset prefix must be a non-trivial path ending at '/'")



_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def _parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, minus dateutil for S3's ISO 8601 (``2024-05-01T12:00:00.000Z``): every
    version in a listing carries a LastModified, and dateutil took a quarter of a purge's time parsing
    them. The same aware datetimes; anything else (RFC 822 headers, epochs) goes to botocore's parser."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """One client per endpoint per process: clients are thread-safe, creating them is not cheap."""
    import boto3
    import botocore.session
    from botocore.config import Config

    with _clients_lock:
        key = (endpoint_url, region)
        if key not in _clients:
            session = botocore.session.get_session()
            session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
            _clients[key] = boto3.session.Session(botocore_session=session).client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region or "us-east-1",
                config=Config(
                    retries={"max_attempts": 8, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=20,
                ),
            )
        return _clients[key]
