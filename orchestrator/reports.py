"""Signed erasure reports: what was and was not erased for a request that has no certificate (failed,
cancelled, waiting, still running), or for any request on demand.

A report is signed exactly as a certificate is (``certificates.sign`` over the canonical JSON, Ed25519, the
signing key's ``key_id``), so ``lethe certificate --verify FILE`` and the README's offline check verify it
unchanged; ``kind: "erasure-report"`` tells it from a certificate, which has no ``kind``. A report is a
signed snapshot of the request's status object (the ledger's public read), not a record: nothing is
written, and a later report of the same request may say more.

It holds what the status object holds and nothing more: keyed hashes of the subject (and of the
identifiers its resolutions derived), never a raw value; per target its status, counts, level, the reason
it was skipped or waits, its attempts, and its error as the ledger keeps it (scrubbed of the subject's
values by the worker before it was ever stored, and capped here).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.certificates import key_id, rfc3339, sign

REPORT_KIND = "erasure-report"
REPORT_VERSION = 1
MAX_ERROR = 500  # the ledger keeps errors short already; a report never grows with a vendor's text


def erasure_report(status: dict[str, Any], signing_key: Ed25519PrivateKey,
                   issued_at: datetime | None = None) -> dict[str, Any]:
    """The signed report of the request whose status object (``Ledger.status``) is ``status``."""
    targets = [_target(t) for t in status["tasks"]]
    body: dict[str, Any] = {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "request_id": status["id"],
        "scope": status["scope"],
        **({"dataset": status["dataset"]} if status.get("dataset") else {"subject_hashes": status["subject_hashes"]}),
        "derived": status.get("derived") or [],
        "status": status["status"],
        "dry_run": status["dry_run"],
        "regime": status["regime"],
        "received_at": status["received_at"],
        "due_at": status["due_at"],
        "completed_at": status["completed_at"],
        "data_map_digest": status["data_map_digest"],
        "targets": targets,
        # The two lists a reader wants first: erased means completed and verified with no residue.
        "erased": [t["target"] for t in targets if t["status"] == "completed" and not t["residue"]],
        "not_erased": [t["target"] for t in targets if t["status"] != "completed" or t["residue"]],
        "issued_at": rfc3339(issued_at or datetime.now(UTC)),
        "key_id": key_id(signing_key.public_key()),
    }
    return sign(body, signing_key)


def _target(task: dict[str, Any]) -> dict[str, Any]:
    error = task.get("error")
    return {
        "target": task["target"],
        "kind": task["kind"],
        "status": task["status"],
        "deleted": task["deleted"],
        "residue": task["residue"],
        "level": task["level"],
        "error": error[:MAX_ERROR] if isinstance(error, str) else None,
        "reason": task["reason"],
        "attempts": task["attempts"],
    }
