"""Identity resolution (SPEC "Identity resolution"): more identifiers of a subject, derived from those a
request carries by read-only lookups into the application's database (``identities:`` in the data map).

Resolutions run once, when the request is filed, before anything is planned (docs/decisions.md): their
values are then fixed for the life of the request, so a target that deletes the lookup's own rows (the
``users`` row) cannot make a later lookup miss, and a lookup database that cannot be reached files
nothing (ResolutionUnavailable) instead of a half-resolved request.

Every resolved value passes the same validator and normalisation as a request's own values
(``normalise_value``), and only its keyed hash is ever recorded; the raw values are sealed with the request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.identifiers import InvalidIdentifier, Subject, keyed_hash, normalise_value
from workers.targets.base import PermanentError, RetryableError
from workers.targets.selectors import DEFAULT_TIMEOUT_SECONDS, KeysQuery

# A lookup that finds more than this many values for one subject is refused: one person does not have a
# thousand user ids, and a query that matches that many is not selecting one person.
MAX_VALUES = 100
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")


class ResolutionUnavailable(Exception):
    """A resolution's database could not be reached or gave up (selectors.unreachable): nothing was filed.
    The message names the resolution and the driver's error type, never a value or the URL."""


class ResolutionRefused(InvalidIdentifier):
    """A resolution yielded a value that must not reach a selector, or too many, or its database refused
    the subject's value (a DataError: a retry cannot mend it): nothing was filed, the subject is bad."""


class Identity(BaseModel):
    """One ``identities:`` entry: ``sql`` looks up values of kind ``to`` from a value of kind ``from``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME.pattern, description="Shown with every hash it derived (``via``).")
    source: str = Field(alias="from", description="The identifier kind the lookup starts from.")
    kind: str = Field(alias="to", description="The identifier kind the lookup yields.")
    url: str
    sql: str
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=3600)

    @model_validator(mode="after")
    def _checked(self) -> Identity:
        if self.source == self.kind:
            raise ValueError(f"from and to are both {self.source!r}")
        # The same read-only check as keys_query (sql_check.check_read_query), run by KeysQuery itself.
        params = self.query.parameters()
        if params != {self.source}:
            raise ValueError(f"sql must bind exactly :{self.source} (the from kind), not "
                             f"{', '.join(':' + p for p in sorted(params)) or 'no parameter'}")
        return self

    @property
    def query(self) -> KeysQuery:
        return KeysQuery(url=self.url, sql=self.sql, timeout_seconds=self.timeout_seconds)


def parse_identities(raw: Any, identifiers: Mapping[str, re.Pattern[str] | None],
                     errors: list[str]) -> tuple[Identity, ...]:
    """The map's ``identities:`` in the order they must run (a chain's first link first), appending to
    ``errors`` what is wrong: undeclared kinds, duplicate names, unsafe SQL, a cycle (named)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append("identities must be a list of {name, from, to, url, sql}")
        return ()
    parsed: list[Identity] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        label = f"identity {item.get('name', i)!r}" if isinstance(item, dict) else f"identities[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{label} must be a mapping")
            continue
        try:
            identity = Identity.model_validate(item)
        except ValidationError as exc:
            for e in exc.errors():
                where = ".".join(str(p) for p in e["loc"]) or "config"
                errors.append(f"{label}: {where}: {str(e['msg']).removeprefix('Value error, ')}")
            continue
        undeclared = sorted({identity.source, identity.kind} - set(identifiers))
        if undeclared:
            errors.append(f"{label}: undeclared identifier kinds: {', '.join(undeclared)}")
            continue
        if identity.name in names:
            errors.append(f"{label}: duplicate identity name")
            continue
        names.add(identity.name)
        parsed.append(identity)
    graph: dict[str, set[str]] = {}
    for identity in parsed:
        graph.setdefault(identity.kind, set()).add(identity.source)
    try:
        order = {kind: n for n, kind in enumerate(TopologicalSorter(graph).static_order())}
    except CycleError as exc:
        errors.append(f"identities: resolutions form a cycle: {' -> '.join(exc.args[1])}")
        return tuple(parsed)
    return tuple(sorted(parsed, key=lambda identity: order[identity.kind]))


@dataclass(frozen=True)
class Resolution:
    """What a request's resolutions found: kind -> the distinct canonical values, and kind -> the names of
    the resolutions that were run for it (found something or not). Never printed with its values."""

    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    via: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sources: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (kind, value) -> via

    def found(self) -> set[str]:
        return {kind for kind, values in self.values.items() if values}

    def reason_missing(self, kind: str) -> str | None:
        """Why a target needing ``kind`` is skipped, when a resolution for it ran and found nothing."""
        if kind in self.via and not self.values.get(kind):
            return f"no {kind} resolved via {', '.join(self.via[kind])}"
        return None

    def derived(self, key: bytes) -> list[dict[str, str]]:
        """The derived identifiers as the status object and certificate show them: keyed hashes only."""
        return sorted(({"kind": kind, "hash": keyed_hash(key, kind, value), "via": via}
                       for kind, values in self.values.items() for value in values
                       for via in self.sources[(kind, value)]), key=lambda d: (d["kind"], d["hash"], d["via"]))

    def sealable(self) -> dict[str, list[str]]:
        """The raw values to seal with the request (kind -> values)."""
        return {kind: list(values) for kind, values in self.values.items() if values}

    def __repr__(self) -> str:  # never print raw values, even in a traceback
        return f"Resolution(kinds={sorted(self.found())})"


def resolve(identities: tuple[Identity, ...], subject: Subject,
            patterns: Mapping[str, re.Pattern[str] | None]) -> Resolution:
    """Run every resolution whose ``from`` the subject carries or an earlier resolution found, in chain
    order. A kind the request itself carries is not resolved: the requester's value stands. Raises
    ResolutionUnavailable (a database error) or ResolutionRefused (a bad or excessive value)."""
    found: dict[str, list[str]] = {}
    via: dict[str, list[str]] = {}
    sources: dict[tuple[str, str], list[str]] = {}
    for identity in identities:
        if identity.kind in subject:
            continue
        starts = [subject[identity.source]] if identity.source in subject else found.get(identity.source, [])
        if identity.source not in subject and identity.source not in via:
            continue  # nothing to start from: neither carried nor resolvable
        via.setdefault(identity.kind, []).append(identity.name)
        values = found.setdefault(identity.kind, [])
        for start in starts:
            for value in _lookup(identity, start, patterns.get(identity.kind)):
                if value not in values:
                    values.append(value)
                    if len(values) > MAX_VALUES:
                        raise ResolutionRefused(f"identity {identity.name!r} resolved more than {MAX_VALUES} "
                                                f"{identity.kind} values for one subject; nothing was filed")
                names = sources.setdefault((identity.kind, value), [])
                if identity.name not in names:
                    names.append(identity.name)
    return Resolution({k: tuple(v) for k, v in found.items()}, {k: tuple(v) for k, v in via.items()},
                      {k: tuple(v) for k, v in sources.items()})


def _lookup(identity: Identity, start: str, pattern: re.Pattern[str] | None) -> list[str]:
    """The canonical values one lookup returns for one start value (NULLs left out)."""
    try:
        rows = list(identity.query.values({identity.source: start}, MAX_VALUES + 1,
                                          what=f"identity {identity.name!r}"))
    except RetryableError as exc:
        raise ResolutionUnavailable(f"{exc}; nothing was filed, try again when its database answers") from None
    except PermanentError as exc:  # the subject's value, not the database, is at fault: a retry cannot mend it
        raise ResolutionRefused(f"{exc}; nothing was filed") from None
    values = []
    for row in rows:
        if row is None:
            continue
        try:
            values.append(normalise_value(identity.kind, str(row), pattern))
        except InvalidIdentifier as exc:
            raise ResolutionRefused(f"identity {identity.name!r} returned an unsafe value ({exc}); "
                                    "nothing was filed") from None
    return values


def subjects_for(subject: Subject, derived: Mapping[str, tuple[str, ...]], needed: set[str]) -> list[Subject]:
    """The subjects one target runs with: the request's own values, and one combination per resolved value
    of each derived kind the target needs (a kind with two user ids: two subjects, each purged)."""
    combos: list[dict[str, str]] = [dict(subject)]
    for kind in sorted(needed - set(subject)):
        combos = [{**combo, kind: value} for combo in combos for value in derived.get(kind, ())]
    return [Subject(combo) for combo in combos]
