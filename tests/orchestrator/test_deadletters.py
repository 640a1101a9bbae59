"""A dead letter's listing, from any bytes and headers: never a raw identifier, never a crash."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.deadletters import SHOWN_CHARACTERS, describe
from orchestrator.events import ERASURE_REQUESTED, make_event

headers = st.dictionaries(st.sampled_from(["x-lethe-reason", "x-lethe-dead-letter-id", "x-lethe-dead-lettered-at",
                                           "x-lethe-replay-of", "other"]),
                          st.none() | st.integers() | st.text(max_size=200), max_size=5)
names = st.text(max_size=120) | st.sampled_from(["svc", "crm-4242", "4242", "a\x00b", "\ud800"])


def shown(entry: Any) -> list[str]:
    return [v for v in entry.as_dict().values() if v is not None]


@settings(max_examples=300)
@given(body=st.binary(max_size=500), given_headers=headers)
def test_any_bytes_and_headers_describe(body: bytes, given_headers: dict[str, Any]) -> None:
    entry = describe(body, given_headers)
    assert entry.id and entry.reason
    for value in shown(entry):
        assert isinstance(value, str) and len(value) <= max(SHOWN_CHARACTERS, 36) and value.isprintable()


@settings(max_examples=300)
@given(source=names, event_id=names, value=st.sampled_from(["4242", "bob@example.com", "Bob@Example.com"]))
def test_the_subject_is_never_shown(source: str, event_id: str, value: str) -> None:
    """Even a hostile body that repeats its subject's value in its source or id."""
    event = make_event(ERASURE_REQUESTED, {"subject": {"user_id": value}}, source="svc", key=b"k")
    event.update(source=f"{source}-{value}", id=f"{value} {event_id}")
    # A fixed dead-letter id: a fresh uuid4 can hold "4242" by chance, which is lethe's id, not the subject.
    entry = describe(json.dumps(event).encode(), {"x-lethe-reason": "bad-signature", "x-lethe-dead-letter-id": "dl-1"})
    for text in shown(entry):
        assert value.lower() not in text.lower()
    assert entry.type == ERASURE_REQUESTED and entry.reason == "bad-signature"
