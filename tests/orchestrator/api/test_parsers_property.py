"""Property tests for what the API parses from outside before anything else: body framing (Content-Length,
streamed chunks), Idempotency-Key namespacing and the session cookie. Unit tests: the body policy runs in
front of a stand-in app that reports what reached it."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.api import sessions
from orchestrator.api.auth import NAME_PATTERN, Principal, Role
from orchestrator.api.bodies import MAX_BODY, BodyPolicy
from orchestrator.ledger import stored_idempotency_key

KEY_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200)
NAMES = st.from_regex(NAME_PATTERN, fullmatch=True)


def run(headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/v1/erasure-requests"
        ) -> tuple[int, int | None, bytes | None]:
    """(status, bytes the app read or None if it was never called, content-type the app saw)."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        read = 0
        while True:
            message = await receive()
            read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen["read"], seen["type"] = read, dict(scope["headers"]).get(b"content-type")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}

    async def main() -> None:
        try:
            await BodyPolicy(app)(scope, receive, send)
        except Exception as exc:  # the too-large signal: FastAPI answers it 413 (test_bodies.py)
            assert getattr(exc, "status_code", None) == 413, exc
            sent.append({"type": "http.response.start", "status": 413})

    asyncio.run(main())
    return sent[0]["status"], seen.get("read"), seen.get("type")


@settings(max_examples=200, deadline=None)
@given(length=st.one_of(st.text(max_size=30), st.integers(0, 10**12).map(str)),
       chunks=st.lists(st.binary(max_size=40_000), min_size=1, max_size=6))
def test_body_policy_passes_or_refuses_but_never_over_reads(length: str, chunks: list[bytes]) -> None:
    """Any Content-Length text and any chunking: 400 (not a number), 413 (over 64 KiB, declared or sent),
    or the app runs having read at most 64 KiB; it never sees a declared length over the limit."""
    raw = length.encode("utf-8", "surrogatepass")
    status, read, content_type = run([(b"content-length", raw), (b"content-type", b"text/plain")], chunks)
    total = sum(map(len, chunks))
    if not raw.isdigit():
        assert status == 400 and read is None
    elif int(raw) > MAX_BODY:
        assert status == 413 and read is None
    elif total > MAX_BODY:
        assert status == 413
    else:
        assert (status, read, content_type) == (200, total, b"application/json")


@given(chunks=st.lists(st.binary(max_size=30_000), min_size=1, max_size=8))
def test_a_streamed_body_without_length_is_cut_at_the_limit(chunks: list[bytes]) -> None:
    status, read, content_type = run([(b"content-type", b"application/x-www-form-urlencoded")], chunks,
                                     path="/login")
    total = sum(map(len, chunks))
    assert (status, read) == ((413, None) if total > MAX_BODY else (200, total))
    assert content_type in (None, b"application/x-www-form-urlencoded")  # only /v1 reads JSON


@given(a=st.tuples(NAMES, KEY_TEXT), b=st.tuples(NAMES, KEY_TEXT), digest=st.text("0123456789abcdef", min_size=64,
                                                                                   max_size=64))
def test_stored_keys_never_collide_across_callers(a: tuple[str, str], b: tuple[str, str], digest: str) -> None:
    """Two callers' keys are equal only for the same token name and key; none equals an event's or the CLI's."""
    stored_a, stored_b = stored_idempotency_key("api", a[1], a[0]), stored_idempotency_key("api", b[1], b[0])
    assert (stored_a == stored_b) == (a == b)
    assert stored_a != stored_idempotency_key("event", digest)
    assert stored_a != stored_idempotency_key("cli", a[1]) and stored_a != stored_idempotency_key("cli", stored_a)


@given(value=st.one_of(st.text(max_size=1200), st.binary(max_size=300).map(lambda b: b.hex())))
def test_a_cookie_that_was_not_issued_is_no_session(value: str) -> None:
    key = b"k" * 32
    assert sessions.decode(value, key) is None
    issued = sessions.encode(sessions.Session.new(Principal("alice", Role.REQUESTER)), key)
    assert sessions.decode(issued, key) is not None
    assert sessions.decode(issued + "x", key) is None and sessions.decode(issued, b"j" * 32) is None
