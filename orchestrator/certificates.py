r"""Signed certificates of erasure (Ed25519) and the canonical JSON that they and the audit chain hash.

Anyone holding a certificate and lethe's public keys (``lethe certificate --public-key``: every key the
ledger has used, each headed by its ``key_id``) can check it offline: ``lethe certificate --verify FILE``
does (``verify_certificate``), and so does this, with nothing of lethe's (the README shows the same). A
reader that keeps the first or the last of two equal keys would read other values than the ones signed, so
a file with a duplicate key is refused::

    import base64, hashlib, json
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    def unique(pairs):  # {"request_id": "forged", "request_id": "signed"} is refused, not half-read
        if len({k for k, _ in pairs}) != len(pairs): raise ValueError("duplicate key in certificate")
        return dict(pairs)

    cert = json.load(open("certificate.json"), object_pairs_hook=unique)
    signature = base64.b64decode(cert.pop("signature"), validate=True)
    body = json.dumps(cert, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    END = "-----END PUBLIC KEY-----"
    keys = [load_pem_public_key((b[b.index("-----BEGIN"):] + END + "\n").encode())
            for b in open("lethe-public.pem").read().split(END)[:-1]]
    key_id = lambda k: hashlib.sha256(k.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]
    next(k for k in keys if key_id(k) == cert["key_id"]).verify(signature, body)   # raises if forged
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# 2: targets carry gone_by (and replica_of for a replica), the request its gone_by. A version-1 certificate
# has neither and verifies unchanged: the signature covers whatever fields the body holds.
CERTIFICATE_VERSION = 2
MAX_CERTIFICATE_BYTES = 1 << 20  # a certificate is a few KB; a bigger file is not one


class CertificateError(ValueError):
    """A certificate file that does not verify; the message says why (safe to show)."""


def canonical_json(value: Any) -> bytes:
    """The SPEC's canonical form: sorted keys, no spaces, UTF-8 (RFC 8785 for data without floats)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def rfc3339(value: datetime | None) -> str | None:
    """The one timestamp form of the ledger, its hashes, signatures and documents: UTC, ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def signature_of(value: Any, key: Ed25519PrivateKey) -> str:
    """Standard base64 Ed25519 signature over the canonical JSON of ``value``."""
    return base64.b64encode(key.sign(canonical_json(value))).decode("ascii")


def signature_valid(value: Any, signature: str | None, public_key: Ed25519PublicKey | None) -> bool:
    if not signature or public_key is None:
        return False
    try:
        public_key.verify(base64.b64decode(signature, validate=True), canonical_json(value))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return the certificate: ``body`` plus ``signature`` over the canonical JSON of ``body``."""
    if "signature" in body:
        raise ValueError("body is already signed")
    return {**body, "signature": signature_of(body, key)}


def verify(certificate: dict[str, Any], public_key: Ed25519PublicKey | None) -> bool:
    body = {k: v for k, v in certificate.items() if k != "signature"}
    signature = certificate.get("signature")
    return isinstance(signature, str) and signature_valid(body, signature, public_key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise CertificateError(f"the certificate has the key {duplicate!r} twice: refused (a reader that keeps "
                               "one of them would see other values than the signed ones)")
    return dict(pairs)


def parse_certificate(data: bytes) -> dict[str, Any]:
    """A certificate file as a dict, refusing what could be read two ways: duplicate keys at any depth,
    bytes that are not UTF-8, anything but one JSON object."""
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise CertificateError(f"not a certificate: larger than {MAX_CERTIFICATE_BYTES} bytes")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except CertificateError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CertificateError(f"not a certificate: not one JSON document ({type(exc).__name__})") from None
    if not isinstance(value, dict) or not isinstance(value.get("signature"), str):
        raise CertificateError("not a certificate: a JSON object with a signature is expected")
    return value


def verify_certificate(data: bytes, public_keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """Check a certificate file offline against lethe's public keys (``key_id`` -> key, as
    ``parse_public_keys`` reads them); return it, or raise CertificateError saying why not."""
    certificate = parse_certificate(data)
    certified_by = certificate.get("key_id")
    if certified_by is None and len(public_keys) == 1:  # issued before certificates named their key
        certified_by = next(iter(public_keys))
    if not isinstance(certified_by, str) or certified_by not in public_keys:
        raise CertificateError(f"signed by an unknown key (key_id {str(certified_by)[:32]!r})")
    if not verify(certificate, public_keys[certified_by]):
        raise CertificateError("bad signature: the certificate was changed or forged")
    return certificate


def parse_public_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """``key_id`` -> key of every PEM public key in ``text`` (the output of ``lethe certificate --public-key``);
    the id is computed from the key, never read from the comment beside it."""
    keys: dict[str, Ed25519PublicKey] = {}
    marker = "-----END PUBLIC KEY-----"
    for block in text.split(marker)[:-1]:
        start = block.find("-----BEGIN PUBLIC KEY-----")
        if start < 0:
            continue
        try:
            key = serialization.load_pem_public_key((block[start:] + marker + "\n").encode("ascii"))
        except UnsupportedAlgorithm:
            raise ValueError("a public key of another algorithm than Ed25519") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        keys[key_id(key)] = key
    if not keys:
        raise ValueError("no PEM public key found")
    return keys


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id of a signing key: the first 16 hex digits of SHA-256 over its raw 32 public bytes.

    Certificates and outbound events carry it, so a verifier picks the right key after a rotation."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def create_private_key(path: Path) -> Ed25519PrivateKey:
    """Generate a key pair into a new 0600 PEM file (O_EXCL: two hosts never overwrite each other's)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_secret_file(path, pem)
    return key


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``; FileExistsError if it exists, so two hosts or processes
    starting at once never overwrite each other's secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
