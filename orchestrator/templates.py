"""``{identifier}`` placeholders in data-map selectors, filled only from a validated Subject."""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

from orchestrator.identifiers import Subject

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """A selector template that is not a plain ``{kind}`` template."""


class MissingIdentifier(LookupError):
    """The request does not carry an identifier the target's selector needs: the target is skipped."""

    def __init__(self, kinds: Iterable[str]):
        self.kinds = sorted(kinds)
        super().__init__(f"the request carries no {', '.join(self.kinds)}")


def placeholders(template: str) -> set[str]:
    """Identifier kinds a template uses. Only bare ``{kind}``: no index, attribute, conversion or format."""
    found: set[str] = set()
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"bad template {template!r}: {exc}") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(f"bad placeholder in {template!r}: only {{identifier_kind}} is allowed")
        found.add(name)
    return found


def placeholders_in(value: Any) -> set[str]:
    """Placeholders anywhere in a string, or in the values of a (nested) mapping or list."""
    if isinstance(value, str):
        return placeholders(value)
    if isinstance(value, dict):
        return set().union(*(placeholders_in(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(placeholders_in(v) for v in value)) if value else set()
    return set()


def fill(value: Any, subject: Subject) -> Any:
    """Fill every placeholder of ``value`` (string, mapping or list) from the subject's validated values."""
    if isinstance(value, str):
        missing = placeholders(value) - set(subject)
        if missing:
            raise MissingIdentifier(missing)
        return value.format_map(subject)
    if isinstance(value, dict):
        return {k: fill(v, subject) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [fill(v, subject) for v in value]
    return value
