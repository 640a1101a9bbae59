"""structlog JSON logs for every lethe process, with request and task ids bound per task.

No raw subject identifier may reach a log line. Code never logs one on purpose; as a second line of
defence, a worker registers the values of the request it is running (``redact_values``) and every line
is scrubbed of them once it is rendered (message, fields and traceback alike), including log lines from
libraries (boto3, Celery), in every form a value is written in: composed or decomposed (NFC, NFD), as
given, repr-, ascii()-, UTF-8-bytes-, URL- or JSON-escaped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

import structlog

REDACTED = "[redacted]"
_secrets: ContextVar[tuple[str, ...]] = ContextVar("lethe_redact", default=())


@contextmanager
def redact_values(values: Iterable[str]) -> Iterator[None]:
    """While the block runs, these values are replaced by [redacted] in every log event."""
    token = _secrets.set(tuple(sorted({v for v in values if v})))
    try:
        yield
    finally:
        _secrets.reset(token)


def written_forms(value: str) -> set[str]:
    """The ways a value appears in text: composed or decomposed (NFC, NFD), each as given, escaped by
    repr() or ascii() (``jos\\xe9``), as its UTF-8 bytes' repr (``jos\\xc3\\xa9``), URL-encoded (a query
    string, a key in a request line), and each of those JSON-escaped (a rendered log line, an error body)."""
    forms: set[str] = set()
    for text in {value, unicodedata.normalize("NFC", value), unicodedata.normalize("NFD", value)}:
        forms |= {text, repr(text)[1:-1], ascii(text)[1:-1], repr(text.encode())[2:-1],
                  quote(text, safe=""), quote(text), quote_plus(text)}
    return forms | {json.dumps(form)[1:-1] for form in forms}


SHORT = 4  # a value this short that is only ASCII letters and digits (an id "12", a name "ann") is bounded


def _bounded(value: str) -> bool:
    """Whether the value is only found standing alone (no ASCII letter or digit beside it): scrubbing a short
    id or name wherever it occurs would cut every number and word holding it ("2026-12", "annual"). Any
    longer value is found glued to anything too ("user123456.png")."""
    return len(value) <= SHORT and value.isascii() and value.isalnum()


@lru_cache(maxsize=1024)
def _forms(values: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """(form, bounded) for every written form of these values, lowercased (matching ignores case:
    CARL@example.com is the subject carl@example.com), longest first."""
    forms = {(form.lower(), _bounded(value)) for value in values if value for form in written_forms(value)}
    return tuple(sorted(forms, key=lambda f: len(f[0]), reverse=True))


def _alnum(text: str, at: int) -> bool:
    return 0 <= at < len(text) and text[at].isascii() and text[at].isalnum()


def _clusters(text: str) -> Iterator[tuple[int, int]]:
    """The text cut where NFC normalisation never joins the two sides: before a character that is not a
    combining mark and does not compose with what precedes it (a Hangul vowel, a Tamil length mark do)."""
    start = 0
    for i in range(1, len(text)):
        ch = text[i]
        joins = not ch.isascii() and _nfc(text[start:i + 1]) != _nfc(text[start:i]) + _nfc(ch)
        if joins or unicodedata.combining(ch):
            continue
        yield start, i
        start = i
    yield start, len(text)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _view(text: str) -> tuple[str, list[tuple[int, int]] | None]:
    """The text as forms are searched in, NFC and lowercased, and, when that moved characters, the span of
    ``text`` each of its characters came from (None: the same places)."""
    if unicodedata.is_normalized("NFC", text):
        low = text.lower()
        if len(low) == len(text):
            return low, None
        return low, [(i, i + 1) for i, ch in enumerate(text) for _ in ch.lower()]  # İ -> i + U+0307
    origin: list[tuple[int, int]] = []
    for start, end in _clusters(text):
        origin += [(start, end)] * sum(len(ch.lower()) for ch in _nfc(text[start:end]))
    return _nfc(text).lower(), origin


def _spans(text: str, forms: tuple[tuple[str, bool], ...]) -> list[tuple[int, int]]:
    """Where a form occurs in the text, any case, composed or not; a short id only where it stands alone
    (``_bounded``): "users/12/a.jpg" for subject 12, not a UUID or timestamp that happens to contain "12".
    Overlapping finds are merged. Plain searches, no regex: a worker scrubs for a new subject on every task,
    and compiling a case-insensitive pattern cost 2 ms."""
    low, origin = _view(text)
    found = []
    for form, bounded in forms:
        start = low.find(form)
        while start != -1:
            end = start + len(form)
            if not bounded or (not _alnum(low, start - 1) and not _alnum(low, end)):
                found.append((start, end) if origin is None else (origin[start][0], origin[end - 1][1]))
            start = low.find(form, start + 1)
    merged: list[tuple[int, int]] = []
    for start, end in sorted(found):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def scrub(text: str, values: Iterable[str] | None = None) -> str:
    """Replace every written form of each value (``written_forms``) by [redacted], in composed or decomposed
    text alike (a short id only where it stands alone)."""
    forms = _forms(tuple(sorted(set(values))) if values is not None else _secrets.get())
    if not forms:
        return text
    parts, last = [], 0
    for start, end in _spans(text, forms):
        parts += [text[last:start], REDACTED]
        last = end
    return "".join(parts) + text[last:] if parts else text


def mentions(text: str, values: Iterable[str]) -> bool:
    """True when the text holds one of the values in any written form or case (what ``scrub`` removes)."""
    forms = _forms(tuple(sorted(set(values))))
    return bool(forms) and bool(_spans(text, forms))


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _scrub_rendered(_logger: Any, _name: str, line: Any) -> str:
    """The last step of every line: each string of the rendered JSON (message, fields, the formatted
    traceback) is decoded, scrubbed and encoded again, so an escape never hides a value (``\\ncarl@x``) and
    the line stays valid JSON."""
    if not _secrets.get():
        return line
    return _JSON_STRING.sub(lambda m: json.dumps(scrub(json.loads(m.group()))), line)


def _scrub_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """lethe's own events are scrubbed before they leave structlog too: a handler other than lethe's (a
    test's capture, a library's) gets them clean."""
    if _secrets.get():
        for key, value in list(event.items()):
            if isinstance(value, str):
                event[key] = scrub(value)
            elif isinstance(value, list | tuple | dict):
                event[key] = scrub(repr(value))
    return event


_configured = False


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr for lethe's own and every library's log records."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # filter_by_level first: a record below the logger's level costs nothing more (the worker logs
        # every task at INFO; scrubbing and formatting them only to drop them was 0.2 ms a task).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.processors.format_exc_info, _scrub_event,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer(), _scrub_rendered],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "werkzeug", "mlflow", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str = "lethe") -> Any:
    if not _configured:
        configure()
    return structlog.get_logger(name)
