"""What a caller may read (SPEC "HTTP API"), for the API and the dashboard alike.

A requester reads only the requests filed under its own token name (``requests.requested_by``); another
requester's request answers exactly as an unknown id does (404, same message), so ids cannot be probed. A
hold's reason is for operators and admins: a requester filing for a held subject sees its request
``on_hold`` and its tasks ``held``, never why. Operators and admins read everything.
"""

from __future__ import annotations

from typing import Any

from orchestrator.api.auth import Principal, Role
from orchestrator.ledger import UnknownRequest

HOLD_REASON = "legal hold"  # the ledger parks a held subject's tasks with "legal hold: <reason>"
HIDDEN_HOLD_REASON = "legal hold (its reason is shown to operators and admins)"


def sees_all(principal: Principal) -> bool:
    return principal.role is not Role.REQUESTER


def owner(principal: Principal) -> str | None:
    """The token name a listing is limited to, or None for every request."""
    return None if sees_all(principal) else principal.name


def hold_reason(principal: Principal, reason: Any) -> Any:
    """A task's or audit entry's reason as this caller may see it."""
    if sees_all(principal) or not isinstance(reason, str) or not reason.startswith(HOLD_REASON):
        return reason
    return HIDDEN_HOLD_REASON


def may_see(principal: Principal, status: dict[str, Any]) -> bool:
    return sees_all(principal) or status.get("requested_by") == principal.name


def visible(principal: Principal, status: dict[str, Any]) -> dict[str, Any]:
    """The status object as this caller may see it; UnknownRequest when it may not see it at all."""
    if sees_all(principal):
        return status
    if not may_see(principal, status):
        raise UnknownRequest(f"no request with id {status['id']!r}")  # the ledger's own words for an unknown id
    return {**status, "tasks": [{**t, "reason": hold_reason(principal, t.get("reason"))} for t in status["tasks"]]}


def visible_page(principal: Principal, page: dict[str, Any]) -> dict[str, Any]:
    """A listing already limited to ``owner(principal)``, with what it may not see removed."""
    return {**page, "items": [visible(principal, s) for s in page["items"]]}


def visible_audit(principal: Principal, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An audit trail without the hold reasons this caller may not see."""
    if sees_all(principal):
        return entries
    return [{**e, "detail": {k: hold_reason(principal, v) if k == "reason" else v for k, v in e["detail"].items()}}
            if isinstance(e.get("detail"), dict) else e for e in entries]
