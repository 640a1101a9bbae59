"""The LETHE_API_TOKENS file: parsing, refusal of bad lines, rotation without restart, failing closed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.api.auth import Action, Principal, Role, TokenStore, parse_tokens
from orchestrator.config import ConfigError

A, B = "a" * 24, "b" * 24


def test_lines_comments_and_default_names() -> None:
    """`token role [name]`, comments and blank lines ignored; a missing name gets one from the line number."""
    entries = parse_tokens(f"# tokens\n\n{A} admin ada  # the admin\n{B} requester\n")
    assert [p for _, p in entries] == [Principal("ada", Role.ADMIN), Principal("token-4", Role.REQUESTER)]
    assert entries[1][1].may(Action.CREATE) and not entries[1][1].may(Action.RETRY)
    assert entries[0][1].actor("api") == "api:ada(admin)"


@pytest.mark.parametrize(("text", "complaint"), [
    (f"{A}\n", "expected 'token role [name]'"),
    (f"{A} admin ada extra\n", "expected 'token role [name]'"),
    (f"{A} root\n", "role must be one of"),
    ("short admin\n", "at least 16 characters"),
    (f"{A} admin ada\n{A} operator oscar\n", "the same token appears twice"),
    (f"{A} admin ada\n{B} operator ada\n", "used twice"),
    (f"{A} admin <script>\n", "name must be"),
])
def test_bad_lines_are_refused_without_showing_the_token(text: str, complaint: str) -> None:
    """Each malformed line is a ConfigError naming the line, never the token."""
    with pytest.raises(ConfigError) as err:
        parse_tokens(text)
    assert complaint in str(err.value) and "line" in str(err.value)
    assert A not in str(err.value) and B not in str(err.value)


def test_rotation_takes_effect_and_a_broken_file_fails_closed(tmp_path: Path) -> None:
    """A changed file is read again on the next call; an unreadable or malformed one refuses every token."""
    path = tmp_path / "tokens"
    path.write_text(f"{A} admin ada\n")
    store = TokenStore(path)
    assert store.lookup(A) == Principal("ada", Role.ADMIN) and store.lookup(B) is None
    secret = store.session_secret
    path.write_text(f"{B} operator oscar\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert store.lookup(A) is None and store.lookup(B) == Principal("oscar", Role.OPERATOR)
    assert store.session_secret != secret  # dashboard sessions of the old file end
    path.write_text("garbage\n")
    os.utime(path, ns=(2, 2))
    assert store.lookup(B) is None and store.error and "line 1" in store.error
    path.unlink()
    assert store.lookup(B) is None and "cannot read" in (store.error or "")
    with pytest.raises(ConfigError):
        TokenStore(path)  # at start a missing file is an error, not an empty token list
