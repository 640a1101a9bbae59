"""``{identifier}`` placeholders: only bare kinds, filled only from a validated Subject."""

from __future__ import annotations

import pytest

from orchestrator.identifiers import Subject
from orchestrator.templates import MissingIdentifier, TemplateError, fill, placeholders, placeholders_in

PATTERNS = {"user_id": None, "email": None, "phone": None}


def subject(**values: str) -> Subject:
    return Subject.parse(values, PATTERNS)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("users/{user_id}/", {"user_id"}),
        ("{user_id}-{email}", {"user_id", "email"}),
        ("{user_id}/{user_id}", {"user_id"}),
        ("static/prefix/", set()),
        ("", set()),
        ("{{user_id}}", set()),
        ("{{literal}}/{email}", {"email"}),
        ("{é}", {"é"}),
    ],
)
def test_placeholders_finds_bare_kinds(template: str, expected: set[str]) -> None:
    """placeholders() returns the bare {kind} names a template uses; escaped {{...}} are literal text."""
    assert placeholders(template) == expected


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("users/{0}/", id="positional-index"),
        pytest.param("users/{}/", id="auto-numbered"),
        pytest.param("{a.b}", id="attribute"),
        pytest.param("{user_id.__class__}", id="dunder-attribute"),
        pytest.param("{a[0]}", id="index"),
        pytest.param("{a!r}", id="conversion-r"),
        pytest.param("{a!s}", id="conversion-s"),
        pytest.param("{a:>5}", id="format-spec"),
        pytest.param("{a:{b}}", id="nested-spec"),
        pytest.param("{ a }", id="spaces"),
        pytest.param("{a-b}", id="dash"),
        pytest.param("users/{user_id", id="unclosed"),
        pytest.param("users/user_id}/", id="stray-close"),
        pytest.param("users/{user_id}}", id="extra-close"),
        pytest.param("{", id="lone-open"),
        pytest.param("}", id="lone-close"),
        pytest.param("{a!}", id="empty-conversion"),
    ],
)
def test_placeholders_refuses_anything_but_bare_kinds(template: str) -> None:
    """Indexes, attributes, conversions, format specs and unbalanced braces raise TemplateError."""
    with pytest.raises(TemplateError):
        placeholders(template)


def test_template_error_is_a_value_error() -> None:
    """TemplateError is a ValueError, so pydantic validators turn it into a validation error."""
    assert issubclass(TemplateError, ValueError)


def test_placeholders_in_nested_values() -> None:
    """placeholders_in() collects kinds from strings in nested mappings and lists; other values add none."""
    value = {
        "match": {"subject_id": "{user_id}", "tags": ["{email}", "fixed", 3]},
        "count": 7,
        "flag": None,
        "pair": ("{phone}", "x"),
    }
    assert placeholders_in(value) == {"user_id", "email", "phone"}
    assert placeholders_in({}) == set()
    assert placeholders_in([]) == set()
    assert placeholders_in(42) == set()


def test_placeholders_in_refuses_bad_nested_template() -> None:
    """A bad placeholder deep inside a mapping still raises TemplateError."""
    with pytest.raises(TemplateError):
        placeholders_in({"outer": [{"inner": "{user_id!r}"}]})


def test_fill_string() -> None:
    """fill() substitutes each placeholder with the subject's validated value."""
    assert fill("users/{user_id}/", subject(user_id="12")) == "users/12/"
    assert fill("{user_id}:{email}:{user_id}", subject(user_id="7", email="a@b.c")) == "7:a@b.c:7"


def test_fill_keeps_escaped_braces_literal() -> None:
    """Escaped braces stay literal single braces after filling."""
    assert fill("{{x}}/{user_id}", subject(user_id="12")) == "{x}/12"


def test_fill_uses_the_nfc_value() -> None:
    """fill() uses the normalised value, not the raw request text."""
    assert fill("users/{user_id}/", subject(user_id="jose\u0301")) == "users/jos\u00e9/"


def test_fill_nested_mapping_and_list() -> None:
    """fill() fills strings inside nested dicts and lists and leaves other values and keys untouched."""
    value = {
        "subject_id": "{user_id}",
        "{email}": "key-is-not-filled",
        "nested": {"who": ["{email}", "static", 5, None]},
        "limit": 10,
    }
    assert fill(value, subject(user_id="12", email="a@b.c")) == {
        "subject_id": "12",
        "{email}": "key-is-not-filled",
        "nested": {"who": ["a@b.c", "static", 5, None]},
        "limit": 10,
    }


def test_fill_does_not_mutate_its_input() -> None:
    """fill() returns a new structure; the template mapping is unchanged."""
    template = {"match": {"subject_id": "{user_id}"}}
    fill(template, subject(user_id="12"))
    assert template == {"match": {"subject_id": "{user_id}"}}


def test_fill_passes_non_strings_through() -> None:
    """Numbers and None are returned as they are."""
    s = subject(user_id="12")
    assert fill(5, s) == 5
    assert fill(None, s) is None


def test_fill_missing_identifier_names_the_kinds() -> None:
    """fill() raises MissingIdentifier naming every kind the subject lacks, sorted, and no present kind."""
    with pytest.raises(MissingIdentifier) as info:
        fill("{phone}/{user_id}/{email}", subject(user_id="12"))
    assert info.value.kinds == ["email", "phone"]
    assert "email" in str(info.value)
    assert "phone" in str(info.value)
    assert "user_id" not in str(info.value)


def test_fill_missing_identifier_in_nested_value() -> None:
    """A placeholder the subject lacks inside a nested mapping also raises MissingIdentifier."""
    with pytest.raises(MissingIdentifier) as info:
        fill({"match": {"mail": ["{email}"]}, "id": "{user_id}"}, subject(user_id="12"))
    assert info.value.kinds == ["email"]


def test_missing_identifier_is_a_lookup_error() -> None:
    """MissingIdentifier is a LookupError, distinct from the ValueError of a bad template."""
    assert issubclass(MissingIdentifier, LookupError)
    assert not issubclass(MissingIdentifier, ValueError)


def test_fill_refuses_bad_template_even_with_values() -> None:
    """fill() never formats an attribute/index placeholder, even when the kind is present."""
    for template in ("{user_id.__class__}", "{user_id[0]}", "{user_id!r}", "{user_id:>9}"):
        with pytest.raises(TemplateError):
            fill(template, subject(user_id="12"))
