"""Subject identifiers: hostile values are refused before they can reach a selector (SPEC "Data map")."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.identifiers import (
    MAX_VALUE_LENGTH,
    InvalidIdentifier,
    Subject,
    keyed_hash,
    normalise_value,
)
from orchestrator.templates import fill

PATTERNS: dict[str, re.Pattern[str] | None] = {"user_id": None, "email": None}
KEY = bytes.fromhex("6c" * 32)
# Never appears in any message lethe writes itself: if it shows up, the value leaked into the message.
SENTINEL = "Qx7Zsecret"
PREFIX_TEMPLATE = "users/{user_id}/"

HOSTILE_VALUES = [
    pytest.param("*", id="star"),
    pytest.param("?", id="question-mark"),
    pytest.param("", id="empty"),
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a%b", id="percent"),
    pytest.param("a[0]", id="brackets"),
    pytest.param("{user_id}", id="braces"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("a\u200bb", id="zero-width-space"),
    pytest.param("a\u202eb", id="rtl-override"),
    pytest.param("a\ufeffb", id="bom"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\ud800b", id="lone-surrogate"),
    pytest.param(" 12", id="leading-space"),
    pytest.param("12 ", id="trailing-space"),
    pytest.param("\t12", id="leading-tab"),
    pytest.param("12\u3000", id="trailing-ideographic-space"),
    pytest.param("x" * 10 * 1024, id="10KB"),
    pytest.param("x" * (MAX_VALUE_LENGTH + 1), id="257-chars"),
]

# Hostile values with a sentinel around them, still hostile, to check the message never repeats them.
EMBEDDED_HOSTILE = [
    f"{SENTINEL}*",
    f"{SENTINEL}?",
    f"{SENTINEL}/..",
    f"../{SENTINEL}",
    f"{SENTINEL}/{SENTINEL}",
    f"{SENTINEL}\x00",
    f"{SENTINEL}\n",
    f"{SENTINEL}\u200b",
    f" {SENTINEL}",
    f"{SENTINEL} ",
    SENTINEL * 100,
]


def _accepted(value: str) -> str | None:
    """The normalised value if parse accepts it as user_id, else None."""
    try:
        return Subject.parse({"user_id": value}, PATTERNS)["user_id"]
    except InvalidIdentifier:
        return None


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_normalise_value_refuses_hostile_values(value: str) -> None:
    """normalise_value refuses wildcards, separators, relative paths, control chars, padding, huge values."""
    with pytest.raises(InvalidIdentifier):
        normalise_value("user_id", value)


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_subject_parse_refuses_hostile_values(value: str) -> None:
    """Subject.parse refuses a request when any of its identifier values is hostile."""
    with pytest.raises(InvalidIdentifier, match=r"^user_id: "):
        Subject.parse({"email": "alice@example.com", "user_id": value}, PATTERNS)


@pytest.mark.parametrize("value", EMBEDDED_HOSTILE)
def test_refusal_message_never_repeats_the_value(value: str) -> None:
    """The InvalidIdentifier message names the problem, never the value (nor any part beyond the bad char)."""
    with pytest.raises(InvalidIdentifier) as info:
        Subject.parse({"user_id": value}, PATTERNS)
    message = str(info.value)
    assert value not in message
    assert SENTINEL not in message
    assert repr(value) not in repr(info.value)


def test_long_value_message_is_short() -> None:
    """A 10 KB value is refused for its length with a short message that does not echo it."""
    with pytest.raises(InvalidIdentifier, match="longer than 256") as info:
        normalise_value("user_id", "x" * 10 * 1024)
    assert len(str(info.value)) < 200


def test_value_of_exactly_max_length_is_accepted() -> None:
    """A value of exactly MAX_VALUE_LENGTH (256) characters is accepted; one more is refused."""
    assert normalise_value("user_id", "x" * MAX_VALUE_LENGTH) == "x" * MAX_VALUE_LENGTH
    with pytest.raises(InvalidIdentifier):
        normalise_value("user_id", "x" * (MAX_VALUE_LENGTH + 1))


def test_length_is_measured_after_nfc() -> None:
    """256 decomposed 'é' (512 code points) are accepted because their NFC form is 256 characters."""
    decomposed = "e\u0301" * MAX_VALUE_LENGTH
    assert normalise_value("user_id", decomposed) == "\u00e9" * MAX_VALUE_LENGTH


@pytest.mark.parametrize(
    "value",
    [12, 12.0, None, True, b"12", ["12"], {"id": "12"}, ("12",)],
    ids=["int", "float", "none", "bool", "bytes", "list", "dict", "tuple"],
)
def test_non_string_values_are_refused(value: object) -> None:
    """Values must be strings: ints, bytes, None, lists and mappings are refused, without echoing them."""
    with pytest.raises(InvalidIdentifier, match="must be a string") as info:
        Subject.parse({"user_id": value}, PATTERNS)
    assert "12" not in str(info.value)


def test_unknown_identifier_kind_is_refused() -> None:
    """A kind the data map does not declare is refused, naming the declared kinds but not the value."""
    with pytest.raises(InvalidIdentifier, match="unknown identifier kind 'phone'") as info:
        Subject.parse({"phone": f"{SENTINEL}555"}, PATTERNS)
    assert "email, user_id" in str(info.value)
    assert SENTINEL not in str(info.value)


def test_empty_request_is_refused() -> None:
    """A request that carries no identifier at all is refused."""
    with pytest.raises(InvalidIdentifier, match="no subject identifier"):
        Subject.parse({}, PATTERNS)


def test_regex_kind_must_match_whole_value() -> None:
    """A kind declared with a regex must fullmatch: "[0-9]+" refuses "12a" and "a12", accepts "12"."""
    patterns = {"user_id": re.compile("[0-9]+")}
    assert Subject.parse({"user_id": "12"}, patterns)["user_id"] == "12"
    for bad in ("12a", "a12", "1 2"):
        with pytest.raises(InvalidIdentifier, match="does not match the pattern") as info:
            Subject.parse({"user_id": bad}, patterns)
        assert bad not in str(info.value)


def test_regex_cannot_allow_forbidden_characters() -> None:
    """A permissive regex (".*") does not let a wildcard or separator through."""
    patterns = {"user_id": re.compile(".*")}
    for bad in ("*", "a/b", "..", ""):
        with pytest.raises(InvalidIdentifier):
            Subject.parse({"user_id": bad}, patterns)


def test_regex_is_checked_on_the_nfc_form() -> None:
    """The regex sees the NFC form: a decomposed 'é' matches a pattern written with the composed 'é'."""
    patterns = {"user_id": re.compile("caf\u00e9")}
    assert Subject.parse({"user_id": "cafe\u0301"}, patterns)["user_id"] == "caf\u00e9"


def test_values_are_nfc_normalised() -> None:
    """A decomposed 'é' (e + U+0301) is stored in its composed NFC form, equal to the composed input."""
    decomposed = Subject.parse({"user_id": "jose\u0301"}, PATTERNS)
    composed = Subject.parse({"user_id": "jos\u00e9"}, PATTERNS)
    assert decomposed["user_id"] == "jos\u00e9"
    assert decomposed == composed
    assert decomposed.hashes(KEY) == composed.hashes(KEY)


def test_ordinary_values_are_accepted_unchanged() -> None:
    """Ordinary ids and emails, including inner spaces, dots and non-ASCII letters, pass unchanged."""
    for value in ("12", "alice@example.com", "a.b", "Zoë Smith", "user-12_x", "ユーザー"):
        assert normalise_value("user_id", value) == value


def _independent_hash(key: bytes, kind: str, value: str) -> str:
    text = unicodedata.normalize("NFC", value)
    if kind == "email":
        text = text.lower()
    return hmac.new(key, (kind + ":" + text).encode("utf-8"), hashlib.sha256).hexdigest()


def test_keyed_hash_is_hmac_sha256_of_kind_and_value() -> None:
    """keyed_hash == hex(HMAC-SHA256(key, kind + ":" + NFC(value))), computed independently."""
    expected = hmac.new(KEY, b"user_id:12", hashlib.sha256).hexdigest()
    assert keyed_hash(KEY, "user_id", "12") == expected
    assert len(expected) == 64


def test_keyed_hash_normalises_to_nfc() -> None:
    """The decomposed and the composed 'é' hash the same, equal to the HMAC of the composed form."""
    composed = keyed_hash(KEY, "user_id", "jos\u00e9")
    assert keyed_hash(KEY, "user_id", "jose\u0301") == composed
    assert composed == hmac.new(KEY, "user_id:jos\u00e9".encode(), hashlib.sha256).hexdigest()


def test_keyed_hash_lowercases_emails_only() -> None:
    """Emails are lowercased before hashing; other kinds keep their case."""
    expected = hmac.new(KEY, b"email:alice@example.com", hashlib.sha256).hexdigest()
    assert keyed_hash(KEY, "email", "Alice@Example.COM") == expected
    assert keyed_hash(KEY, "user_id", "ABC") != keyed_hash(KEY, "user_id", "abc")
    assert keyed_hash(KEY, "user_id", "ABC") == _independent_hash(KEY, "user_id", "ABC")


def test_keyed_hash_differs_by_kind_and_key() -> None:
    """The same value under different kinds, or under a different key, hashes differently."""
    assert keyed_hash(KEY, "user_id", "12") != keyed_hash(KEY, "account", "12")
    assert keyed_hash(KEY, "user_id", "12") != keyed_hash(b"other-key", "user_id", "12")


def test_subject_hashes_every_kind() -> None:
    """Subject.hashes maps every kind to its keyed hash."""
    subject = Subject.parse({"user_id": "12", "email": "Alice@Example.com"}, PATTERNS)
    assert subject.hashes(KEY) == {
        "email": _independent_hash(KEY, "email", "Alice@Example.com"),
        "user_id": _independent_hash(KEY, "user_id", "12"),
    }


def test_subject_repr_never_shows_values() -> None:
    """repr(), str() and f-string formatting of a Subject show kinds, never values."""
    subject = Subject.parse({"user_id": f"{SENTINEL}12", "email": f"{SENTINEL}@example.com"}, PATTERNS)
    for shown in (repr(subject), str(subject), f"{subject}", f"{subject!r}", repr([subject])):
        assert SENTINEL not in shown
        assert "user_id" in shown
        assert "email" in shown


def test_subject_is_a_mapping_of_validated_values() -> None:
    """A Subject behaves as a read-only mapping kind -> validated value."""
    subject = Subject.parse({"user_id": "12"}, PATTERNS)
    assert dict(subject) == {"user_id": "12"}
    assert len(subject) == 1
    assert "user_id" in subject
    assert "email" not in subject


# --- properties ------------------------------------------------------------------------------------------

_TOKENS = ["1", "2", "12", "a", "é", "e\u0301", ".", "..", "/", "\\", "*", "?", "%", " ", "\x00", "\u200b",
           "{", "}", "[", "]", "\n", "\u017f", "\uff0f"]
_values = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(exclude_categories=()), max_size=12),  # surrogates and unassigned too
    st.lists(st.sampled_from(_TOKENS), max_size=8).map("".join),
    st.text(st.sampled_from("ab1."), min_size=250, max_size=262),
)


@settings(max_examples=300, deadline=None)
@given(value=_values)
def test_filled_prefix_never_gains_a_separator(value: str) -> None:
    """Any value is refused, or fills users/{user_id}/ into a prefix with exactly one more '/' than users/."""
    accepted = _accepted(value)
    if accepted is None:
        return
    subject = Subject.parse({"user_id": value}, PATTERNS)
    prefix = fill(PREFIX_TEMPLATE, subject)
    assert prefix.startswith("users/")
    assert prefix.endswith("/")
    assert prefix.count("/") == "users/".count("/") + 1
    assert prefix == f"users/{accepted}/"
    assert ".." not in prefix
    assert accepted == unicodedata.normalize("NFC", accepted)


@settings(max_examples=300, deadline=None)
@given(a=_values, b=_values, extend=st.booleans())
def test_one_subjects_prefix_never_covers_another(a: str, b: str, extend: bool) -> None:
    """For distinct accepted values a != b, users/{a}/ is never a prefix of users/{b}/ (12 never hits 123)."""
    if extend:
        b = a + b  # the dangerous case: b starts with a
    na, nb = _accepted(a), _accepted(b)
    if na is None or nb is None or na == nb:
        return
    pa = fill(PREFIX_TEMPLATE, Subject.parse({"user_id": a}, PATTERNS))
    pb = fill(PREFIX_TEMPLATE, Subject.parse({"user_id": b}, PATTERNS))
    assert not pb.startswith(pa)
    assert not pa.startswith(pb)


@settings(max_examples=300, deadline=None)
@given(value=_values, before=st.booleans())
def test_refusal_never_leaks_the_value(value: str, before: bool) -> None:
    """Whatever value is refused, the message never contains it (a sentinel inside it never shows up)."""
    marked = f"{SENTINEL}{value}" if before else f"{value}{SENTINEL}"
    try:
        Subject.parse({"user_id": marked}, PATTERNS)
    except InvalidIdentifier as exc:
        assert SENTINEL not in str(exc)


def test_subject_12_never_reaches_123() -> None:
    """The concrete SPEC case: the prefix of subject 12 is not a prefix of subject 123's keys."""
    p12 = fill(PREFIX_TEMPLATE, Subject.parse({"user_id": "12"}, PATTERNS))
    assert p12 == "users/12/"
    assert not "users/123/photo.jpg".startswith(p12)


# -- one normalisation: what is hashed is what fills the selector (issue 17 item 6) ------------------------
_emails = st.builds(lambda local, domain: f"{local}@{domain}",
                    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
                            min_size=1, max_size=20),
                    st.sampled_from(["example.com", "EXAMPLE.org", "Straße.de", "İstanbul.tr"]))


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(["email", "user_id"]), value=st.one_of(_values, _emails))
def test_normalise_is_idempotent_and_hashes_like_the_raw_form(kind: str, value: str) -> None:
    """normalise(normalise(x)) == normalise(x) and hash(normalise(x)) == hash(x), in NFC or NFD."""
    try:
        once = normalise_value(kind, value)
    except InvalidIdentifier:
        return
    assert normalise_value(kind, once) == once
    assert keyed_hash(KEY, kind, once) == keyed_hash(KEY, kind, value)
    assert keyed_hash(KEY, kind, unicodedata.normalize("NFD", value)) == keyed_hash(KEY, kind, value)


@settings(max_examples=300, deadline=None)
@given(value=_emails, flip=st.sampled_from([str.upper, str.lower, str.swapcase, str.title]))
def test_an_email_in_another_case_fills_the_selector_it_hashes_as(value: str, flip) -> None:  # type: ignore[no-untyped-def]
    """Two spellings that hash alike are one subject and fill the same selector (CARL@ selected nothing)."""
    try:
        a = Subject.parse({"email": value}, PATTERNS)
        b = Subject.parse({"email": flip(value)}, PATTERNS)
    except InvalidIdentifier:
        return
    if a.hashes(KEY) == b.hashes(KEY):
        assert fill("mail/{email}/", a) == fill("mail/{email}/", b)
    assert a["email"] == unicodedata.normalize("NFC", a["email"].lower())  # the selector gets the hashed form


def test_carl_in_capitals_selects_carls_mail() -> None:
    subject = Subject.parse({"email": "CARL@Example.com"}, PATTERNS)
    assert fill("mail/{email}/", subject) == "mail/carl@example.com/"
    assert subject.hashes(KEY) == Subject.parse({"email": "carl@example.com"}, PATTERNS).hashes(KEY)
