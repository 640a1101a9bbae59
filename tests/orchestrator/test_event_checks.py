"""The intake's checks against any bytes at all, event times, and lethe's Ed25519-signed outbound events."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.certificates import canonical_json, key_id
from orchestrator.events import (
    DATA_WRITTEN,
    ERASURE_REQUESTED,
    MAX_JSON_DEPTH,
    CloudEvent,
    Rejected,
    check,
    event_time,
    make_event,
    nested_too_deep,
    sign,
    sign_outbound,
    verify_outbound,
)
from orchestrator.intake import Outcome, handle, verdict
from orchestrator.service import Lethe

KEY = b"platform-shared-event-secret"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MAP = """
version: 1
identifiers: {user_id: "[0-9]+", email: "[^@]+@[^@]+"}
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
"""


def decided(body: bytes, key: bytes = KEY) -> CloudEvent | Rejected:
    """What ``check`` decides for a body on its own: an event to file, or a dead-letter reason. Anything
    else it raised would fail the test: check is total by itself, not only behind the intake's boundary."""
    try:
        return check(body, key, now=NOW)
    except Rejected as rejected:
        return rejected


def signed(event: dict[str, Any], key: bytes = KEY) -> bytes:
    return json.dumps(sign(event, key), ensure_ascii=False).encode()


def an_event(**changes: Any) -> dict[str, Any]:
    event = {"specversion": "1.0", "id": "e-1", "source": "svc", "type": ERASURE_REQUESTED,
             "time": "2026-12-02T11:59:00Z", "data": {"subject": {"user_id": "12"}}}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


# -- whatever the bytes, a message is accepted or dead-lettered ------------------------------------------
@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=2048))
def test_any_bytes_are_accepted_or_dead_lettered(body: bytes) -> None:
    assert isinstance(decided(body), CloudEvent | Rejected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
hostile_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(st.text(max_size=10), json_values, max_size=4), data=json_values,
       type_=st.sampled_from([ERASURE_REQUESTED, DATA_WRITTEN, "other"]) | hostile_text,
       time=st.sampled_from(["2026-12-02T11:59:00Z", "", "yesterday"]) | hostile_text)
def test_signed_hostile_json_is_accepted_or_dead_lettered(extra: dict[str, Any], data: Any, type_: str,
                                                          time: str) -> None:
    """Signed with the right key, so every later check is reached with hostile values."""
    event = {**extra, **an_event(type=type_, time=time, data=data)}
    assert isinstance(decided(json.dumps(event).encode()), CloudEvent | Rejected)


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"signature": "' + b"a" * 64 + b'", "x": "\\ud800"}', "malformed"),  # a lone surrogate, escaped
    (b"[" * 40_000, "malformed"),  # nested far deeper than json's recursion limit
    (b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "malformed"),
    ('{"id": "é"}'.encode("latin-1"), "malformed"),  # not UTF-8
    ('{"id": "x"}'.encode("utf-16"), "malformed"),  # json.loads would guess UTF-16: not here
    (b'\xef\xbb\xbf{"id": "x"}', "malformed"),  # a byte order mark
    (b'{"signature": "' + b"a" * 64 + b'", "n": NaN}', "malformed"),
    (b'{"signature": "\\ud800"}', "bad-signature"),
    (b'{"signature": "' + "é".encode() * 32 + b'"}', "bad-signature"),
    (b'"just a string"', "malformed"),
    (b"9" * 5000, "malformed"),  # an integer longer than Python converts
])
def test_poison_bodies_get_their_reason(body: bytes, reason: str) -> None:
    result = decided(body)
    assert isinstance(result, Rejected) and result.reason == reason


def test_a_lone_surrogate_inside_a_signed_event_is_malformed() -> None:
    text = json.dumps({**an_event(data={"subject": {"user_id": "\ud800"}}), "signature": "0" * 64})
    result = decided(text.encode())  # its canonical JSON has no UTF-8 form: no signature can match it
    assert isinstance(result, Rejected) and result.reason == "malformed"


def test_depth_bound_is_generous_for_real_events_and_ignores_brackets_in_strings() -> None:
    nested: Any = "12"
    for _ in range(MAX_JSON_DEPTH - 4):
        nested = [nested]
    assert isinstance(decided(signed(an_event(data={"subject": {"user_id": "12"}, "x": nested}))), CloudEvent)
    text_full_of_brackets = an_event(source="[" * 500 + "{" * 500)
    assert isinstance(decided(signed(text_full_of_brackets)), CloudEvent)


@pytest.mark.parametrize("field", ["source", "id", "type"])
def test_control_characters_in_names_are_malformed(field: str) -> None:
    """A NUL in the source would reach the ledger (the actor), which PostgreSQL refuses: the event's fault."""
    result = decided(signed(an_event(**{field: "svc\x00"})))
    assert isinstance(result, Rejected) and result.reason == "malformed"


def test_duplicate_keys_are_refused() -> None:
    body = signed(an_event())[:-1] + b', "data": {"subject": {"user_id": "123"}}}'
    result = decided(body)
    assert isinstance(result, Rejected) and result.reason == "malformed"


def test_a_bug_on_one_message_becomes_a_dead_letter() -> None:
    def buggy() -> None:
        raise RecursionError("somewhere deep")

    result = verdict(buggy)
    assert isinstance(result, Rejected) and result.reason == "malformed" and "RecursionError" in result.detail


# -- time: required, inside the window, converted to UTC ---------------------------------------------------
@pytest.mark.parametrize(("time", "reason"), [
    (None, "malformed"), ("", "malformed"), ("2026-12-02", "malformed"), ("2026-12-02T11:59:00", "malformed"),
    ("2026-13-02T11:59:00Z", "malformed"), ("9999-12-31T23:59:59-14:00", "malformed"),
    ("0001-01-01T00:00:00+05:00", "malformed"), ("2026-12-02T11:59:00 UTC", "malformed"),
    ("2026-11-25T11:59:59Z", "stale"),  # older than 7 days
    ("2026-12-02T12:05:01Z", "stale"),  # more than 5 minutes ahead
    ("2026-12-02T08:05:01-04:00", "stale"),  # 12:05:01 UTC: ahead once converted
    ("2026-12-02T12:04:59+00:00", None), ("2026-12-02T07:04:59-05:00", None), ("2026-11-25T12:00:01Z", None),
    ("2026-12-02t11:59:00.123456789z", None),
])
def test_event_time_window(time: str | None, reason: str | None) -> None:
    result = decided(signed(an_event(time=time)))
    if reason is None:
        assert isinstance(result, CloudEvent)
    else:
        assert isinstance(result, Rejected) and result.reason == reason


def test_max_age_is_configurable() -> None:
    body = signed(an_event(time="2026-11-30T12:00:00Z"))
    assert isinstance(check(body, KEY, now=NOW, max_age_days=3), CloudEvent)
    with pytest.raises(Rejected, match="stale"):
        check(body, KEY, now=NOW, max_age_days=1)


offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=300)
@given(instant=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC)),
       offset=offsets)
def test_event_time_is_the_same_instant_in_utc(instant: datetime, offset: timezone) -> None:
    local = instant.astimezone(offset)
    parsed = event_time(local.isoformat())
    assert parsed == instant and parsed.utcoffset() == timedelta(0)


@settings(max_examples=500)
@given(text=st.text(max_size=40) | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)\Z"))
def test_event_time_parses_or_refuses_any_text(text: str) -> None:
    try:
        parsed = event_time(text)
    except ValueError:
        return
    assert parsed.tzinfo is UTC


# -- a checked event through handle: filed, ignored, or dead-lettered --------------------------------------
@pytest.fixture
def lethe(write_map: Callable[[str], Path], make_lethe: Callable[..., Lethe]) -> Lethe:
    return make_lethe(data_map=write_map(MAP), event_key=KEY.decode())


subjects = st.dictionaries(st.sampled_from(["user_id", "email", "other"]),
                           st.sampled_from(["12", "77", "bob@example.com", "*", "../1", "\ud800", ""]) | st.text(),
                           max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(type_=st.sampled_from([ERASURE_REQUESTED, DATA_WRITTEN]), subject=subjects | json_values,
       extra=st.dictionaries(st.sampled_from(["dry_run", "regime", "target", "x"]),
                             st.sampled_from([True, "photos", "lgpd", "gdpr", None, 3]), max_size=2))
def test_signed_events_through_handle_are_filed_or_dead_lettered(lethe: Lethe, type_: str, subject: Any,
                                                                 extra: dict[str, Any]) -> None:
    data = {"subject": subject, **extra}
    try:
        body = canonical_json(make_event(type_, data, source="svc", key=KEY))
    except UnicodeEncodeError:  # a lone surrogate cannot be signed: sent as its JSON escape, signed with anything
        body = json.dumps({**an_event(type=type_, data=data), "signature": "0" * 64}).encode()
    result = verdict(lambda: handle(lethe, check(body, KEY)))
    assert isinstance(result, Outcome | Rejected)
    if isinstance(result, Outcome) and result.action == "filed":
        assert set(subject) <= {"user_id", "email"}


# -- outbound events: Ed25519, never the event key --------------------------------------------------------
def outbound() -> dict[str, Any]:
    return {"specversion": "1.0", "id": "0f1e", "source": "lethe", "type": "lethe.erasure.completed",
            "time": "2026-12-02T12:00:00Z", "datacontenttype": "application/json",
            "data": {"request_id": "r-1", "subject_hashes": {"user_id": "ab" * 32}}}


def test_outbound_events_verify_with_the_public_key_only() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    event = json.loads(canonical_json(sign_outbound(outbound(), key)))
    assert event["signingkeyid"] == key_id(key.public_key())
    assert verify_outbound(event, [other.public_key(), key.public_key()])
    assert not verify_outbound(event, [other.public_key()])
    assert not verify_outbound({**event, "data": {**event["data"], "request_id": "r-2"}}, [key.public_key()])
    assert not verify_outbound({**event, "signingkeyid": key_id(other.public_key())}, [other.public_key()])


def test_an_outbound_event_cannot_be_replayed_as_a_request() -> None:
    """Even made into the type the intake files, lethe's own signature is no HMAC: bad-signature."""
    key = Ed25519PrivateKey.generate()
    as_request = {**outbound(), "type": ERASURE_REQUESTED, "time": "2026-12-02T11:59:00Z",
                  "data": {"subject": {"user_id": "12"}}}
    for event in (sign_outbound(outbound(), key), sign_outbound(as_request, key)):
        result = decided(canonical_json(event))
        assert isinstance(result, Rejected) and result.reason == "bad-signature"


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(inner=json_values | st.text(alphabet='[]{}"\\x'),
       levels=st.lists(st.sampled_from(["list", "dict"]), max_size=30))
def test_the_depth_bound_agrees_with_the_parsed_value(inner: Any, levels: list[str]) -> None:
    value = inner
    for level in levels:
        value = [value] if level == "list" else {"k[{": value}
    assert nested_too_deep(json.dumps(value)) == (depth_of(value) > MAX_JSON_DEPTH)
