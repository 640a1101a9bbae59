"""The ledger's signing keys: a new one is taken only through a rotation, which the audit chain records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.certificates import create_private_key, load_private_key
from orchestrator.cli.common import LEDGER_ENV, Commands, actor, fail, make_lethe, out, reads

app = Commands(name="keys", help="The ledger's signing keys (every key it used: `lethe certificate --public-key`).")


@app.command(epilog=reads(LEDGER_ENV))
def rotate(
    new_key: Annotated[Path, typer.Option(
        "--new-key", metavar="PATH",
        help="The new Ed25519 private key (PEM); created (mode 0600) when the file does not exist.")],
) -> None:
    """Sign with a new key from now on. The rotation is an audit entry signed by the current key
    (LETHE_SIGNING_KEY) and the new one; every certificate issued before still verifies."""
    lethe = make_lethe()
    if lethe.settings.signing_key is None:
        fail("set LETHE_SIGNING_KEY to the current signing key's file first (with an SQLite ledger it was "
             "generated beside the database, as <database>.signing-key.pem)")
    try:
        key = load_private_key(new_key) if new_key.exists() else create_private_key(new_key)
    except (OSError, ValueError) as exc:
        fail(f"--new-key: cannot load an Ed25519 PEM private key: {exc}")
    new_id = lethe.ledger.rotate_signing_key(key, actor=actor())
    out.print(f"signing key rotated: key_id {new_id} signs from now on. Set LETHE_SIGNING_KEY={new_key} on every "
              "host and restart them (a host with the old key is refused); publish the keys again "
              "(`lethe certificate --public-key`).", highlight=False, soft_wrap=True)
