"""The proof of an erasure: certificates and the ledger's own verification."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from orchestrator.certificates import CertificateError, parse_public_keys, verify_certificate
from orchestrator.cli.common import LEDGER_ENV, Commands, Exit, err, fail, make_lethe, out, reads, request_id

app = Commands()


@app.command(epilog=reads(LEDGER_ENV))
def certificate(
    given: Annotated[str | None, typer.Argument(
        metavar="ID", help="A completed request's id, or any unique prefix of it.")] = None,
    public_key: Annotated[bool, typer.Option(
        "--public-key", help="Print every public key the ledger has used (PEM), the signing one first, each "
        "headed by its key_id.")] = False,
    verify: Annotated[Path | None, typer.Option(
        "--verify", metavar="FILE", help="Check a certificate file: its signature under the key it names, and "
        "no key written twice. Exit 0 when it verifies, 1 when it does not.")] = None,
    keys_file: Annotated[Path | None, typer.Option(
        "--keys", metavar="PEM", help="With --verify: the published public keys (what --public-key printed) "
        "instead of the ledger's, so no ledger is needed.")] = None,
) -> None:
    """Print a completed request's signed certificate or the keys that verify certificates, or check a
    certificate file."""
    if (given is not None) + public_key + (verify is not None) != 1:
        fail("give a request ID, --public-key or --verify FILE")
    if keys_file is not None and verify is None:
        fail("--keys goes with --verify FILE")
    if verify is not None:
        _verify_file(verify, keys_file)
        return
    lethe = make_lethe()
    if public_key:
        sys.stdout.write(lethe.ledger.public_key_pem())
        return
    assert given is not None
    cert = lethe.ledger.certificate(request_id(lethe, given))
    sys.stdout.write(json.dumps(cert, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@app.command("verify-ledger", epilog=reads(LEDGER_ENV))
def verify_ledger() -> None:
    """Check the audit chain, completion records and certificates; exit 1 naming the first bad entry."""
    lethe = make_lethe()
    problems = lethe.ledger.verify()
    if problems:
        err.print(f"[red]ledger verification failed:[/red] {problems[0]}", highlight=False)
        for problem in problems[1:20]:
            err.print(f"  also: {problem}", highlight=False)
        raise typer.Exit(Exit.FAILED)
    signed, last = lethe.ledger.signed_through()
    out.print(f"ledger verified: audit chain ({last} entries, signed through entry {signed}), the requests, "
              "holds and tombstones it records, completion records and certificates are intact", highlight=False)
    if signed < last:
        out.print(f"entries {signed + 1}..{last} come after the last signed head: their removal could not be "
                  "detected until reconcile signs the head", highlight=False)


def _verify_file(path: Path, keys_file: Path | None) -> None:
    try:
        data = path.read_bytes()
        published = keys_file.read_text() if keys_file is not None else make_lethe().ledger.public_key_pem()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {getattr(exc, 'filename', None) or path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        keys = parse_public_keys(published)
    except ValueError as exc:
        fail(f"--keys: {exc}")
    try:
        cert = verify_certificate(data, keys)
    except CertificateError as exc:
        err.print(f"[red]certificate does not verify:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(Exit.FAILED) from None
    out.print(f"certificate of request {cert.get('request_id')} verifies (key_id {cert.get('key_id')})",
              highlight=False)
