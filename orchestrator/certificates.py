"""Signed certificates of erasure (Ed25519) and the canonical JSON that they and the audit chain hash.

Anyone holding a certificate and lethe's public key can check it offline::

    import base64, json
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    cert = json.load(open("certificate.json")); signature = base64.b64decode(cert.pop("signature"))
    body = json.dumps(cert, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    load_pem_public_key(open("lethe-public.pem", "rb").read()).verify(signature, body)  # raises if forged
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CERTIFICATE_VERSION = 1


def canonical_json(value: Any) -> bytes:
    """The SPEC's canonical form: sorted keys, no spaces, UTF-8 (RFC 8785 for data without floats)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return the certificate: ``body`` plus ``signature`` over the canonical JSON of ``body``."""
    if "signature" in body:
        raise ValueError("body is already signed")
    signature = base64.b64encode(key.sign(canonical_json(body))).decode("ascii")
    return {**body, "signature": signature}


def verify(certificate: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    body = {k: v for k, v in certificate.items() if k != "signature"}
    try:
        public_key.verify(base64.b64decode(certificate.get("signature", ""), validate=True), canonical_json(body))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
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
