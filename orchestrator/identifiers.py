"""Subject identifiers: the only values ever placed into a selector, so they are checked hard here.

A value that could widen a selector (a wildcard, a path separator, ``..``, an empty string, a control
character, something huge) is refused before anything is planned, let alone deleted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

MAX_VALUE_LENGTH = 256
# Characters that act as wildcards or separators in some store's selector language.
FORBIDDEN_CHARACTERS = frozenset("*?/\\%[]{}")


class InvalidIdentifier(ValueError):
    """An identifier kind or value that must not reach a selector. The message never repeats the value."""


CASE_FOLDED_KINDS = frozenset({"email"})  # kinds whose values are one subject in any letter case (SPEC)


def canonical(kind: str, value: str) -> str:
    """The one form of a value: NFC, and lowercased for emails. What is hashed and what fills a selector,
    so ``CARL@Example.com`` and ``carl@example.com`` are one subject and erase the same data."""
    text = unicodedata.normalize("NFC", value)
    if kind in CASE_FOLDED_KINDS:
        text = unicodedata.normalize("NFC", text.lower())  # lower() can decompose (İ -> i + U+0307)
    return text


def normalise_value(kind: str, value: object, pattern: re.Pattern[str] | None = None) -> str:
    """Return the canonical form of ``value`` or raise InvalidIdentifier saying why it is unsafe. Every
    door (CLI, API, events, subjects files, holds, lineage) builds subjects through this."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{kind}: the value must be a string")
    text = canonical(kind, value)
    if not text:
        raise InvalidIdentifier(f"{kind}: the value is empty")
    if len(text) > MAX_VALUE_LENGTH:
        raise InvalidIdentifier(f"{kind}: the value is longer than {MAX_VALUE_LENGTH} characters")
    if text != text.strip():
        raise InvalidIdentifier(f"{kind}: the value has leading or trailing whitespace")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text):
        raise InvalidIdentifier(f"{kind}: the value contains control or invisible format characters")
    bad = sorted(set(text) & FORBIDDEN_CHARACTERS)
    if bad:
        raise InvalidIdentifier(f"{kind}: the value contains {' '.join(repr(c) for c in bad)}")
    if ".." in text or text == ".":
        raise InvalidIdentifier(f"{kind}: the value contains a relative path ('.' or '..')")
    if pattern is not None and not pattern.fullmatch(text):
        raise InvalidIdentifier(f"{kind}: the value does not match the pattern the data map declares")
    return text


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """hex(HMAC-SHA256(key, kind + ":" + NFC(value))), emails lowercased first (SPEC): of the canonical
    form, which a value from ``normalise_value`` already is (canonical() is idempotent)."""
    return hmac.new(key, f"{kind}:{canonical(kind, value)}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Subject(Mapping[str, str]):
    """Validated identifier values of one request: kind -> value. Built only through ``parse``."""

    by_kind: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, object], patterns: Mapping[str, re.Pattern[str] | None]) -> Subject:
        """Check every kind is declared by the data map and every value is safe."""
        if not raw:
            raise InvalidIdentifier("the request names no subject identifier")
        values: dict[str, str] = {}
        for kind, value in raw.items():
            if kind not in patterns:
                known = ", ".join(sorted(patterns)) or "none"
                raise InvalidIdentifier(f"unknown identifier kind {kind!r} (the data map declares: {known})")
            values[kind] = normalise_value(kind, value, patterns[kind])
        return cls(values)

    def hashes(self, key: bytes) -> dict[str, str]:
        return {kind: keyed_hash(key, kind, value) for kind, value in sorted(self.by_kind.items())}

    def __getitem__(self, kind: str) -> str:
        return self.by_kind[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_kind)

    def __len__(self) -> int:
        return len(self.by_kind)

    def __repr__(self) -> str:  # never print raw values, even in a traceback
        return f"Subject(kinds={sorted(self.by_kind)})"
