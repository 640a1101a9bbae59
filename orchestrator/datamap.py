"""The data map: where a subject's data lives and how to find it (SPEC "Data map").

Loading validates everything that can be checked without touching a store: identifier kinds and their
patterns, each target's configuration (by its adapter's Config model), placeholders, ``after`` ordering
(unknown names and cycles refused), datasets and declared stores. Targets come back in a topological order.
Each entry of a target's ``replicas:`` becomes a target of its own (orchestrator/copies.py), validated like
any other: it waits for what its primary waits for, and whatever waits for the primary waits for it too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.copies import replica_entries
from orchestrator.identifiers import InvalidIdentifier, Subject
from orchestrator.identities import Identity, Resolution, parse_identities, resolve
from orchestrator.templates import TemplateError
from workers.targets.base import TargetConfig, UnknownTargetKind, known_kinds, target_class


class DataMapError(ValueError):
    def __init__(self, errors: list[str], source: str = "data map"):
        self.errors = errors
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {e}" for e in errors))


@dataclass(frozen=True)
class DeclaredStore:
    name: str
    not_erased: str | None = None


@dataclass(frozen=True)
class DataMap:
    identifiers: Mapping[str, re.Pattern[str] | None]
    targets: tuple[TargetConfig, ...]  # topological order: every target after the ones it waits for
    datasets: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    stores: tuple[DeclaredStore, ...] = ()
    identities: tuple[Identity, ...] = ()  # resolutions in chain order (orchestrator/identities.py)
    text: str = ""
    digest: str = ""  # SHA-256 of the map's text, recorded with every request planned from it

    @classmethod
    def load(cls, path: Path | str) -> DataMap:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataMapError([f"cannot read {path}: {exc.strerror}"], source=str(path)) from None
        except UnicodeDecodeError as exc:
            raise DataMapError(
                [f"cannot read {path}: not UTF-8 (byte {exc.start})"], source=str(path)
            ) from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "data map") -> DataMap:
        errors: list[str] = []
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DataMapError([f"not valid YAML: {exc}"], source) from None
        if not isinstance(doc, dict):
            raise DataMapError(["the map must be a YAML mapping"], source)
        unknown_keys = set(doc) - {"version", "identifiers", "targets", "datasets", "stores", "identities"}
        if unknown_keys:
            errors.append(f"unknown top-level keys: {', '.join(sorted(unknown_keys))}")
        if doc.get("version") != 1:
            errors.append("version must be 1")

        identifiers = _parse_identifiers(doc.get("identifiers"), errors)
        targets = _parse_targets(doc.get("targets"), identifiers, errors)
        ordered = _order(targets, errors)
        datasets = _parse_datasets(doc.get("datasets"), {t.name: t for t in targets}, errors)
        stores = _parse_stores(doc.get("stores"), errors)
        identities = parse_identities(doc.get("identities"), identifiers, errors)
        if errors:
            raise DataMapError(errors, source)
        return cls(
            identifiers=identifiers,
            targets=ordered,
            datasets=datasets,
            stores=stores,
            identities=identities,
            text=text,
            digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )

    def target(self, name: str) -> TargetConfig:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def replicas_of(self, name: str) -> tuple[str, ...]:
        """The names of the replicas the target ``name`` declares, in map order."""
        return tuple(t.name for t in self.targets if t.replica_of == name)

    def with_replicas(self, names: Collection[str]) -> set[str]:
        """``names`` and the replicas of each: a follow-up erasure of a primary reaches its copies too."""
        return set(names) | {t.name for t in self.targets if t.replica_of in names}

    def retention_problem(self, tombstone_days: int) -> str | None:
        """Why this map cannot run with tombstones kept ``tombstone_days``, or None: a backup kept longer
        could be restored after the tombstones saying what to erase again are gone."""
        longest = max((t for t in self.targets if t.backups), default=None,
                      key=lambda t: t.backups.retention_days if t.backups else 0)
        if longest is None or longest.backups is None or longest.backups.retention_days <= tombstone_days:
            return None
        return (f"target {longest.name!r}: backups retention_days {longest.backups.retention_days} exceeds "
                f"LETHE_TOMBSTONE_DAYS ({tombstone_days}): a restore of that backup could not be erased again "
                "once the tombstones are gone; raise LETHE_TOMBSTONE_DAYS or shorten the retention")

    def check_retention(self, tombstone_days: int, source: str = "data map") -> DataMap:
        """This map, or DataMapError naming the target whose backups outlive the tombstones."""
        problem = self.retention_problem(tombstone_days)
        if problem:
            raise DataMapError([problem], source)
        return self

    def parse_subject(self, raw: Mapping[str, object]) -> Subject:
        """Validate a request's identifiers against this map's declared kinds and patterns."""
        return Subject.parse(raw, self.identifiers)

    def resolve(self, subject: Subject) -> Resolution:
        """Run this map's identity resolutions for a parsed subject (before the request is filed)."""
        return resolve(self.identities, subject, self.identifiers)

    def strict_problems(self) -> list[str]:
        """Declared stores with neither a target of the same name nor a not_erased reason."""
        names = {t.name for t in self.targets}
        return [
            f"store {s.name!r} holds personal data but has no target and no not_erased reason"
            for s in self.stores
            if s.name not in names and not s.not_erased
        ]


def _parse_identifiers(raw: Any, errors: list[str]) -> dict[str, re.Pattern[str] | None]:
    if isinstance(raw, list):
        raw = dict.fromkeys(raw)
    if not isinstance(raw, dict) or not raw:
        errors.append("identifiers must be a non-empty list of kinds or a mapping kind -> regex")
        return {}
    result: dict[str, re.Pattern[str] | None] = {}
    for kind, pattern in raw.items():
        if not isinstance(kind, str) or not kind.isidentifier():
            errors.append(f"identifier kind {kind!r} must be a plain name like user_id")
            continue
        if pattern is None:
            result[kind] = None
            continue
        try:
            result[kind] = re.compile(str(pattern))
        except re.error as exc:
            result[kind] = None  # keep the kind so targets using it are not reported as undeclared
            errors.append(f"identifier {kind}: bad regex: {exc}")
    return result


def _parse_targets(
    raw: Any, identifiers: Mapping[str, Any], errors: list[str]
) -> list[TargetConfig]:
    if not isinstance(raw, list) or not raw:
        errors.append("targets must be a non-empty list")
        return []
    targets: list[TargetConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        label = f"targets[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{label} must be a mapping")
            continue
        label = f"target {item.get('name', i)!r}"
        if "kind" not in item:
            errors.append(f"{label}: kind is required (one of: {', '.join(sorted(known_kinds()))})")
            continue
        if "replica_of" in item:
            errors.append(f"{label}: replica_of is not written by hand: declare the copy under its primary's "
                          "replicas: and lethe records which primary it mirrors")
            continue
        primary = _validated(label, {k: v for k, v in item.items() if k != "replicas"}, identifiers, errors)
        if primary is None:
            continue  # its replicas inherit what is wrong with it: one report is enough
        configs = [(label, primary)] + [(where, config) for where, entry in replica_entries(item, errors)
                                        if (config := _validated(where, entry, identifiers, errors))]
        for entry_label, config in configs:
            if config.name in seen:
                errors.append(f"{entry_label}: duplicate target name")
            seen.add(config.name)
            targets.append(config)
    return _after_replicas(targets)


def _validated(label: str, item: dict[str, Any], identifiers: Mapping[str, Any],
               errors: list[str]) -> TargetConfig | None:
    """One target entry checked by its adapter's Config model, or None with its problems in ``errors``."""
    try:
        cls = target_class(str(item.get("kind")))
        config: TargetConfig = cls.Config.model_validate(item)
        needed = config.required_identifiers()
    except UnknownTargetKind as exc:
        errors.append(f"{label}: {exc}")
        return None
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "config"
            errors.append(f"{label}: {where}: {e['msg']}")
        return None
    except (TemplateError, InvalidIdentifier) as exc:
        errors.append(f"{label}: {exc}")
        return None
    undeclared = needed - set(identifiers)
    if undeclared:
        errors.append(f"{label}: placeholders use undeclared identifiers: {', '.join(sorted(undeclared))}")
    return config


def _after_replicas(targets: list[TargetConfig]) -> list[TargetConfig]:
    """A target waiting for a primary waits for its replicas too: a model deleted after the photos it was
    trained on must not go before the replica's copies of them."""
    replicas: dict[str, list[str]] = {}
    for t in targets:
        if t.replica_of is not None:
            replicas.setdefault(t.replica_of, []).append(t.name)
    if not replicas:
        return targets
    return [t.model_copy(update={"after": tuple(dict.fromkeys(
        [*t.after, *(r for dep in t.after for r in replicas.get(dep, ()) if r != t.name)]))}) for t in targets]


def _order(targets: list[TargetConfig], errors: list[str]) -> tuple[TargetConfig, ...]:
    by_name = {t.name: t for t in targets}
    graph: dict[str, tuple[str, ...]] = {}
    for t in targets:
        for dep in t.after:
            if dep not in by_name:
                errors.append(f"target {t.name!r}: after names unknown target {dep!r}")
            if dep == t.name:
                errors.append(f"target {t.name!r}: waits for itself")
        graph[t.name] = tuple(d for d in t.after if d in by_name)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        errors.append(f"after: targets wait for each other in a cycle: {' -> '.join(exc.args[1])}")
        return tuple(targets)
    return tuple(by_name[name] for name in order)


def _parse_datasets(raw: Any, targets: dict[str, TargetConfig],
                    errors: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append("datasets must be a mapping name -> {target: selector}")
        return {}
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for ds_name, per_target in raw.items():
        if not isinstance(per_target, dict) or not per_target:
            errors.append(f"dataset {ds_name!r} must map target names to selectors")
            continue
        for target_name, selector in per_target.items():
            if target_name not in targets:
                errors.append(f"dataset {ds_name!r}: unknown target {target_name!r}")
            elif not isinstance(selector, dict):
                errors.append(f"dataset {ds_name!r}: selector for {target_name!r} must be a mapping")
            else:
                try:
                    targets[target_name].check_dataset_selector(selector)
                except (ValueError, TemplateError) as exc:
                    errors.append(f"dataset {ds_name!r}: selector for {target_name!r}: {exc}")
        # A dataset erased from a primary is erased from its replicas too (their copies of the same source),
        # unless the dataset names the replica itself.
        result[str(ds_name)] = {**{replica.name: selector for name, selector in per_target.items()
                                   if name in targets for replica in targets.values() if replica.replica_of == name},
                                **per_target}
    return result


def _parse_stores(raw: Any, errors: list[str]) -> tuple[DeclaredStore, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append("stores must be a list of {name, not_erased}")
        return ()
    stores = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            errors.append(f"stores: {item!r} must be a mapping with a name")
            continue
        stores.append(DeclaredStore(item["name"], item.get("not_erased")))
    return tuple(stores)
