"""Request and response bodies, as the OpenAPI document shows them (SPEC "Status object")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from orchestrator.ledger import RequestStatus, TaskStatus  # the one list of statuses
from orchestrator.times import to_utc


class ErasureRequestIn(BaseModel):
    """A new erasure request. ``subject`` maps identifier kinds declared by the data map to values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"subject": {"user_id": "12345"}, "dry_run": False}]})

    subject: dict[str, Any] | None = Field(
        None, description="Identifier kind -> value, e.g. {\"user_id\": \"12345\"}. Values are strings; one "
        "that could widen a selector (empty, wildcards, '/', '..', control characters, > 256 characters) is "
        "refused with 422 and nothing is created.")
    dataset: str | None = Field(None, max_length=200,
                                description="Dataset scope (admin only): a source declared under datasets: in the "
                                "data map; it waits for an admin's approval.")
    dry_run: bool = Field(False, description="Count what would be erased; delete nothing.")
    regime: Literal["gdpr", "ccpa"] = Field("gdpr", description="Sets due_at: GDPR one month, CCPA 45 days.")


class HoldIn(BaseModel):
    """A legal hold (Art. 17(3)): the subject's requests wait on_hold and nothing of theirs is deleted."""

    model_config = ConfigDict(extra="forbid")

    subject: dict[str, Any] = Field(description="Identifier kind -> value, validated like a request's.")
    reason: str = Field(min_length=1, max_length=1000, description="The legal ground, kept in the audit trail.")
    until: Annotated[datetime, AfterValidator(to_utc)] | None = Field(
        None, description="When the hold ends by itself (RFC 3339; no offset: UTC); none: until released.")


class HoldRelease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: dict[str, Any]


class TaskOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    target: str
    kind: str
    status: TaskStatus
    deleted: int | None
    residue: int | None
    attempts: int
    error: str | None
    gone_by: str | None = Field(None, description="When no copy holds the subject any more: this target's "
                                "verified purge (and its replicas'), plus its backups' retention; null until then.")
    replica_of: str | None = Field(None, description="The primary target this one is a replica of.")


class DerivedOut(BaseModel):
    """An identifier the data map's identities resolved for the subject: its keyed hash and the resolution."""

    kind: str
    hash: str
    via: str


class StatusOut(BaseModel):
    """The status object. Subjects appear only as keyed hashes, never as raw identifiers."""

    model_config = ConfigDict(extra="allow")

    id: str
    scope: Literal["subject", "dataset"]
    status: RequestStatus
    dry_run: bool
    regime: str
    received_at: str
    due_at: str
    completed_at: str | None
    derived: list[DerivedOut] = []
    gone_by: str | None = Field(None, description="The latest gone_by of the targets a completed request "
                                "erased; null before it completed, for a dry run, or when nothing was erased.")
    tasks: list[TaskOut]


class RequestPage(BaseModel):
    items: list[StatusOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


class Health(BaseModel):
    status: Literal["ok"]
