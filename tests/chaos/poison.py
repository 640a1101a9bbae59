"""Poison messages: bodies that once stopped `lethe intake` for good or slipped past it, each with the
dead-letter reason the SPEC gives it. Used by the chaos run and the intake's integration tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.events import ERASURE_REQUESTED, make_event, sign


def signed_raw(event: dict[str, Any], key: bytes) -> bytes:
    """Signed with the right key, sent as JSON text with escapes. A lone surrogate has no UTF-8 form, so no
    signature can cover it: such an event goes out with any signature (``\\ud800`` in the JSON text)."""
    try:
        return json.dumps(sign(event, key)).encode()
    except UnicodeEncodeError:
        return json.dumps({**event, "signature": "0" * 64}).encode()


def unsigned_request(subject: dict[str, Any], key: bytes, **changes: Any) -> dict[str, Any]:
    """An erasure request as a platform service sends it, before signing."""
    event = make_event(ERASURE_REQUESTED, {"subject": {}}, source="chaos-poison", key=key)
    event = {**{k: v for k, v in event.items() if k != "signature"}, "data": {"subject": subject}, **changes}
    return {k: v for k, v in event.items() if v is not None}


def poison_messages(key: bytes, user: str = "12") -> dict[bytes, str]:
    """body -> reason. ``user`` is a real subject: none of these may ever erase it."""
    now = datetime.now(UTC)
    request = {"subject": {"user_id": user}}
    return {
        b'{"signature": "' + b"a" * 64 + b'", "data": {"subject": {"user_id": "\\ud800"}}}': "malformed",
        signed_raw(unsigned_request({"user_id": "\ud800"}, key), key): "malformed",  # a lone surrogate
        b"[" * 40_000: "malformed",  # deeper than json's recursion limit
        b'{"id": "\xff\xfe"}': "malformed",  # not UTF-8
        '{"id": "x"}'.encode("utf-16"): "malformed",  # UTF-16 JSON: no encoding is guessed
        signed_raw(unsigned_request({"user_id": user}, key, time=None), key): "malformed",  # time is required
        signed_raw(unsigned_request({"user_id": user}, key, time="last tuesday"), key): "malformed",
        json.dumps(make_event(ERASURE_REQUESTED, request, source="chaos-poison", key=key,
                              time=now - timedelta(days=8))).encode(): "stale",  # a replay after the window
        json.dumps(make_event(ERASURE_REQUESTED, request, source="chaos-poison", key=key,
                              time=now + timedelta(minutes=10))).encode(): "stale",
        signed_raw(unsigned_request({"user_id": user}, key, data={**request, "regime": "lgpd"}), key): "malformed",
        signed_raw(unsigned_request({"user_id": "*"}, key), key): "bad-subject",
        json.dumps(unsigned_request({"user_id": user}, key)).encode(): "unsigned",
        signed_raw(unsigned_request({"user_id": user}, key), b"another key"): "bad-signature",
    }
