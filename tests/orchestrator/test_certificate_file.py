"""The offline check of a certificate file (issue 17 item 13): what is read is what was signed, or it fails."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import certificates
from orchestrator.certificates import CertificateError, canonical_json, parse_public_keys, verify_certificate

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KEYS = {certificates.key_id(KEY.public_key()): KEY.public_key()}
BODY = {"version": 1, "request_id": "9c1a7f0e-0000-4000-8000-000000000001", "scope": "subject",
        "subject_hashes": {"user_id": "ab" * 32}, "targets": [{"target": "photos", "deleted": 5}],
        "key_id": certificates.key_id(KEY.public_key())}
CERT = certificates.sign(BODY, KEY)
FORGED_ID = "00000000-0000-4000-8000-00000000f0f0"


def prepended_duplicate(cert: dict[str, Any]) -> bytes:
    """The attack: a forged request_id written before the real one. json.load keeps the last (signed) value,
    so the old documented check passed; a reader that keeps the first sees the forged id."""
    return b'{"request_id": "' + FORGED_ID.encode() + b'", ' + canonical_json(cert)[1:]


def published_keys(*keys: Ed25519PrivateKey) -> str:
    """What `lethe certificate --public-key` prints: the current key first, each headed by its key_id."""
    return "".join(f"# key_id {certificates.key_id(k.public_key())}\n{certificates.public_pem(k)}" for k in keys)


def test_an_issued_certificate_verifies() -> None:
    assert verify_certificate(canonical_json(CERT), KEYS) == CERT
    published = parse_public_keys(published_keys(OTHER, KEY))
    assert verify_certificate(json.dumps(CERT, indent=2).encode(), published) == CERT


def test_prepended_duplicate_request_id_is_refused() -> None:
    data = prepended_duplicate(CERT)
    first_wins = json.loads(data, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
    assert first_wins["request_id"] == FORGED_ID  # what a first-wins reader would believe
    assert certificates.verify(json.loads(data), KEY.public_key())  # why the old check passed it
    with pytest.raises(CertificateError, match="has the key 'request_id' twice"):
        verify_certificate(data, KEYS)


def test_duplicates_are_refused_at_any_depth() -> None:
    nested = canonical_json(CERT).replace(b'"target":"photos"', b'"target":"other","target":"photos"')
    with pytest.raises(CertificateError, match="'target' twice"):
        verify_certificate(nested, KEYS)


@pytest.mark.parametrize("change", [
    lambda c: {**c, "request_id": FORGED_ID},
    lambda c: {**c, "targets": [{"target": "photos", "deleted": 0}]},
    lambda c: {k: v for k, v in c.items() if k != "key_id"},
    lambda c: {**c, "signature": base64.b64encode(OTHER.sign(canonical_json(BODY))).decode()},
])
def test_changed_or_forged_certificates_fail(change: Any) -> None:
    with pytest.raises(CertificateError):
        verify_certificate(canonical_json(change(CERT)), KEYS)


def test_unknown_key_and_non_certificates_fail_with_a_reason() -> None:
    with pytest.raises(CertificateError, match="unknown key"):
        verify_certificate(canonical_json(CERT), {certificates.key_id(OTHER.public_key()): OTHER.public_key()})
    for data in (b"", b"\xff\xfe", b"[1]", b'{"a": 1}', b"[" * 100_000, b" " * (2 << 20)):
        with pytest.raises(CertificateError, match="not a certificate"):
            verify_certificate(data, KEYS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_verify_or_fail_with_certificate_error(data: bytes) -> None:
    """The file is outside input: whatever its bytes, the check answers, never crashes."""
    with contextlib.suppress(CertificateError):
        verify_certificate(data, KEYS)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_any_json_object_verifies_only_if_signed(fields: dict[str, Any]) -> None:
    data = canonical_json({**fields, "signature": fields.get("signature", "AAAA")}) if fields else b"{}"
    try:
        verify_certificate(data, KEYS)
    except CertificateError:
        return
    raise AssertionError("an unsigned object verified")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["-----BEGIN PUBLIC KEY-----\n", "-----END PUBLIC KEY-----\n", "# key_id 00\n",
                                 certificates.public_pem(KEY), "MCowBQYDK2VwAyEA\n", "\u00e9", "\n"])
                | st.text(max_size=40).map(lambda t: [t]), max_size=6).map(lambda parts: "".join(
                    p if isinstance(p, str) else "".join(p) for p in parts)))
def test_any_published_keys_text_parses_or_fails_with_value_error(text: str) -> None:
    """--keys FILE is outside input too: keys, or a ValueError saying why not."""
    try:
        keys = parse_public_keys(text)
    except ValueError:
        return
    assert all(certificates.key_id(k) == name for name, k in keys.items())


def test_published_keys_of_another_algorithm_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="Ed25519"):
        parse_public_keys(certificates.public_pem(KEY) + other.public_bytes(
            certificates.serialization.Encoding.PEM, certificates.serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the snippet's open()s
def test_the_documented_snippet_checks_and_refuses(tmp_path: Path) -> None:
    """The snippet in certificates.py's docstring, the same as the README's, run as a user would in a folder
    holding only the certificate and the published keys (`lethe certificate --public-key`)."""
    assert certificates.__doc__ is not None
    snippet = "\n".join(line[4:] for line in certificates.__doc__.split("::\n", 1)[1].splitlines()
                        if line.startswith("    ") or not line.strip())
    assert "object_pairs_hook" in snippet
    assert snippet.strip() in (Path(__file__).parents[2] / "README.md").read_text()  # one snippet, not two
    (tmp_path / "lethe-public.pem").write_text(published_keys(OTHER, KEY))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        (tmp_path / "certificate.json").write_bytes(canonical_json(CERT))
        exec(compile(snippet, "snippet", "exec"), {})  # passes: signed by a published key
        (tmp_path / "certificate.json").write_bytes(prepended_duplicate(CERT))
        with pytest.raises(ValueError, match="duplicate key"):
            exec(compile(snippet, "snippet", "exec"), {})
    finally:
        os.chdir(cwd)
