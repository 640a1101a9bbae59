"""The operators' dashboard: server-rendered pages (Jinja2), a little inline JS for live refresh.

Sign in with an API token through a form; the session lives in a signed HttpOnly, SameSite=Strict cookie
(``sessions``); signing out revokes it in the ledger. Every POST form carries a CSRF token. Pages show request
ids, statuses, counts, target names and (sanitised) errors — never a raw identifier: the ledger holds none
once a request is done, and the status objects the pages are built from carry only keyed hashes. A
requester sees only its own requests, without hold reasons (``scope``). Unfinished requests show how long
since they last progressed and when reconcile re-sends them; the overview shows workers alive per queue,
queue depths and dead-lettered events. Actions are audited as ``dashboard:NAME(ROLE)``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from orchestrator.api import scope, sessions
from orchestrator.api.auth import Action, Principal, TokenStore
from orchestrator.api.broker import BrokerView
from orchestrator.api.errors import error_for
from orchestrator.api.metrics import SnapshotCache
from orchestrator.api.presentation import audit_summary, chart, parse_time, row
from orchestrator.api.sessions import Session
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.ledger import REQUEST_STATUSES, TERMINAL_REQUEST, LedgerError, UnknownRequest, valid_cursor
from orchestrator.logs import get_logger
from orchestrator.service import Lethe

log = get_logger("lethe.dashboard")
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


def when(value: str | None) -> str:
    """An RFC 3339 time as '2026-11-26 13:30:18 UTC' (the exact value is in the title attribute)."""
    moment = parse_time(value)
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "—"


templates.env.filters["when"] = when
router = APIRouter(include_in_schema=False)
REFRESH_SECONDS = 3
PAGE_SIZE = 50
NOTICES = {"retried": "Failed tasks sent back to the queue.", "cancelled": "Request cancelled.",
           "approved": "Approved: the waiting tasks were sent to the workers.",
           "signed-in": "Signed in."}


# -- sessions and rendering --------------------------------------------------------------------------------
def _tokens(request: Request) -> TokenStore:
    tokens: TokenStore = request.app.state.tokens
    tokens.refresh()
    return tokens


def current_session(request: Request) -> Session | None:
    tokens = _tokens(request)
    if tokens.error:
        return None
    session = sessions.decode(request.cookies.get(sessions.COOKIE), tokens.session_secret)
    if session is not None and session.principal is not None and sessions.revoked(_lethe(request).ledger, session):
        return None  # signed out: a copy of the cookie is worth nothing
    return session


def _lethe(request: Request) -> Lethe:
    lethe: Lethe = request.app.state.lethe
    return lethe


def set_cookie(response: Response, request: Request, session: Session) -> None:
    key = _tokens(request).session_secret
    response.set_cookie(sessions.COOKIE, sessions.encode(session, key), max_age=sessions.MAX_AGE, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")


def render(request: Request, name: str, context: dict[str, Any], session: Session | None,
           status_code: int = 200, new_session: bool = False) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    key = _tokens(request).session_secret
    principal = session.principal if session else None
    response = templates.TemplateResponse(request, name, {
        **context, "nonce": nonce, "principal": principal, "refresh": context.get("refresh", 0),
        "active": "overview" if name == "overview.html" else "requests",
        "csrf": sessions.csrf_token(session, key) if session and key else "",
        "may_retry": bool(principal and principal.may(Action.RETRY)),
        "may_cancel": bool(principal and principal.may(Action.CANCEL)),
        "may_approve": bool(principal and principal.may(Action.APPROVE)),
    }, status_code=status_code)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["Cache-Control"] = "no-store"
    if session is not None and new_session:
        set_cookie(response, request, session)
    return response


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def safe_next(value: str | None) -> str:
    """Only a path on this site: never another origin (no //host, no scheme, no backslash tricks)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 512:
        return "/"
    return value


def signed_in(request: Request) -> tuple[Session, Principal] | None:
    session = current_session(request)
    if session is None or session.principal is None:
        return None
    return session, session.principal


def error_page(request: Request, session: Session | None, status_code: int, message: str) -> HTMLResponse:
    return render(request, "error.html", {"title": f"{status_code}", "message": message}, session, status_code)


# -- sign in and out ---------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    session = current_session(request)
    fresh = session is None
    session = session or Session.new()
    configured = _tokens(request).configured and not _tokens(request).error
    return render(request, "login.html", {"title": "Sign in", "next": safe_next(next), "error": None,
                                          "configured": configured}, session, new_session=fresh)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form(max_length=512)] = "",
          csrf: Annotated[str, Form(max_length=200)] = "",
          next: Annotated[str, Form(max_length=512)] = "/") -> Response:
    tokens = _tokens(request)
    session = current_session(request)
    key = tokens.session_secret
    if not sessions.csrf_ok(session, key, csrf):
        anonymous = Session.new()
        return render(request, "login.html", {"title": "Sign in", "next": safe_next(next), "configured": True,
                                              "error": "The form expired; please sign in again."},
                      anonymous, status_code=403, new_session=True)
    assert session is not None
    principal = tokens.lookup(token.strip()) if token.strip() else None
    if principal is None:
        log.info("dashboard.sign_in_refused")
        return render(request, "login.html", {"title": "Sign in", "next": safe_next(next), "configured": True,
                                              "error": "Unknown token."}, session, status_code=401)
    log.info("dashboard.signed_in", actor=principal.actor("dashboard"))
    response = RedirectResponse(safe_next(next), status_code=303)
    set_cookie(response, request, Session.new(principal))  # a new session id: no fixation
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    session = current_session(request)
    if session is None or not sessions.csrf_ok(session, _tokens(request).session_secret, csrf):
        return RedirectResponse("/", status_code=303)
    if session.principal is not None:
        sessions.revoke(_lethe(request).ledger, session)
        log.info("dashboard.signed_out", actor=session.principal.actor("dashboard"))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- pages ---------------------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def requests_page(request: Request, status: str | None = None, q: str | None = None,
                  cursor: str | None = None) -> Response:
    auth = signed_in(request)
    if auth is None:
        return to_login(request)
    session, principal = auth
    lethe = _lethe(request)
    at = datetime.now(UTC)
    status = status if status in REQUEST_STATUSES else None
    q = (q or "").strip()[:36]
    nxt = None
    owner = scope.owner(principal)
    if q:
        items = lethe.ledger.statuses(lethe.ledger.ids_with_prefix(q, status, PAGE_SIZE, owner))
    else:
        cursor = cursor if cursor and valid_cursor(cursor) else None
        page = lethe.ledger.list_requests(status=status, limit=PAGE_SIZE, cursor=cursor, requested_by=owner)
        items, nxt = page["items"], page["next"]
    items = [scope.visible(principal, s) for s in items]
    waiting = lethe.ledger.waiting([s["id"] for s in items])
    lease = lethe.ledger.lease.total_seconds()
    rows = [row(s, at, waiting.get(s["id"]), lease) for s in items]
    more = f"/?{urlencode({k: v for k, v in {'status': status, 'cursor': nxt}.items() if v})}" if nxt else None
    return render(request, "requests.html", {
        "title": "Requests", "rows": rows, "status": status or "", "q": q, "statuses": REQUEST_STATUSES,
        "more": more, "paged": bool(cursor and not q), "refresh": REFRESH_SECONDS,
        "counts": {"overdue": sum(r["due_class"] == "overdue" for r in rows),
                   "due_soon": sum(r["due_class"] == "due-soon" for r in rows),
                   "failed": sum(r["status"] == "failed" for r in rows),
                   "stalled": sum(r["stalled"] for r in rows)},
        "now": at}, session)


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: str, done: str | None = None) -> Response:
    auth = signed_in(request)
    if auth is None:
        return to_login(request)
    session, _ = auth
    return _request_view(request, session, request_id, notice=NOTICES.get(done or ""))


def _request_view(request: Request, session: Session, request_id: str, notice: str | None = None,
                  error: str | None = None, status_code: int = 200) -> Response:
    lethe = _lethe(request)
    principal = session.principal
    if principal is None:
        return to_login(request)
    try:
        status = scope.visible(principal, lethe.ledger.status(request_id))
        trail = scope.visible_audit(principal, lethe.ledger.audit_trail(request_id))
    except UnknownRequest:
        return error_page(request, session, 404, "No request with this id.")
    at = datetime.now(UTC)
    waiting = lethe.ledger.waiting([status["id"]]).get(status["id"])
    tasks_by_id = {}
    for t in status["tasks"]:
        tasks_by_id[t["target"]] = t
    entries = [{"at": e["at"], "actor": e["actor"], "action": e["action"],
                "target": e["detail"].get("target", "") if isinstance(e["detail"], dict) else "",
                "detail": audit_summary({k: v for k, v in e["detail"].items() if k != "target"})
                if isinstance(e["detail"], dict) else ""} for e in trail]
    cancellable = status["status"] not in TERMINAL_REQUEST and all(
        t["status"] in ("pending", "skipped") and not t["attempts"] for t in status["tasks"])
    return render(request, "request.html", {
        "title": f"Request {status['id'][:8]}", "s": status, "audit": entries,
        "r": row(status, at, waiting, lethe.ledger.lease.total_seconds()),
        "failed": [t for t in status["tasks"] if t["status"] == "failed"],
        "certificate": status["status"] == "completed" and not status["dry_run"],
        "cancellable": cancellable, "notice": notice, "error": error,
        "refresh": 0 if status["status"] in TERMINAL_REQUEST and not error else REFRESH_SECONDS,
    }, session, status_code=status_code)


def _action(request: Request, request_id: str, csrf: str, action: Action) -> Response:
    auth = signed_in(request)
    if auth is None:
        return to_login(request)
    session, principal = auth
    if not sessions.csrf_ok(session, _tokens(request).session_secret, csrf):
        return error_page(request, session, 403, "The form expired or did not come from this dashboard; "
                          "reload the page and try again.")
    if not principal.may(action):
        return error_page(request, session, 403, f"The {principal.role.value} role may not {action.value} requests.")
    lethe = _lethe(request)
    try:
        if action is Action.RETRY:
            lethe.retry(request_id, actor=principal.actor("dashboard"))
        elif action is Action.APPROVE:
            lethe.approve(request_id, actor=principal.actor("dashboard"))
        else:
            lethe.cancel(request_id, actor=principal.actor("dashboard"))
    except UnknownRequest:
        return error_page(request, session, 404, "No request with this id.")
    except (LedgerError, InvalidIdentifier) as exc:
        known = error_for(exc)
        return _request_view(request, session, request_id, error=known.message if known else "refused",
                             status_code=409)
    done = {Action.RETRY: "retried", Action.APPROVE: "approved"}.get(action, "cancelled")
    return RedirectResponse(f"/requests/{quote(request_id)}?done={done}", status_code=303)


@router.post("/requests/{request_id}/retry")
def retry(request: Request, request_id: str, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    return _action(request, request_id, csrf, Action.RETRY)


@router.post("/requests/{request_id}/approve")
def approve(request: Request, request_id: str, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    return _action(request, request_id, csrf, Action.APPROVE)


@router.post("/requests/{request_id}/cancel")
def cancel(request: Request, request_id: str, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    return _action(request, request_id, csrf, Action.CANCEL)


@router.get("/requests/{request_id}/certificate.json")
def certificate(request: Request, request_id: str) -> Response:
    auth = signed_in(request)
    if auth is None:
        return to_login(request)
    session, principal = auth
    try:
        scope.visible(principal, _lethe(request).ledger.status(request_id))
        cert = _lethe(request).ledger.certificate(request_id)
    except UnknownRequest:
        return error_page(request, session, 404, "No request with this id.")
    except LedgerError as exc:
        return error_page(request, session, 409, str(exc))
    return JSONResponse(cert, headers={
        "Content-Disposition": f'attachment; filename="lethe-certificate-{request_id}.json"',
        "Cache-Control": "no-store"})


@router.get("/overview", response_class=HTMLResponse)
def overview_page(request: Request) -> Response:
    auth = signed_in(request)
    if auth is None:
        return to_login(request)
    session, _ = auth
    lethe = _lethe(request)
    snapshots: SnapshotCache = request.app.state.snapshots
    snap = snapshots.get()
    ov = lethe.ledger.overview(snap)
    targets = sorted(set(ov.failed_now_by_target) | set(ov.failures_by_target))
    broker: BrokerView = request.app.state.broker
    return render(request, "overview.html", {
        "title": "Overview", "ov": ov, "refresh": 10,
        "requests_chart": chart([("received", "s-received", ov.received_per_hour),
                                 ("completed", "s-completed", ov.completed_per_hour)], ov.hours),
        "erased_chart": chart([("items erased", "s-erased", ov.erased_per_hour)], ov.hours),
        "totals": {"received": sum(ov.received_per_hour), "completed": sum(ov.completed_per_hour),
                   "erased": sum(ov.erased_per_hour)},
        "failures": [{"target": t, "now": ov.failed_now_by_target.get(t, 0),
                      "events": ov.failures_by_target.get(t, 0)} for t in targets],
        "broker": broker.state(), "dead_letters": sorted(snap.dead_letters_by_reason.items()),
        "resurrections": sorted(snap.resurrections_by_target.items()),
    }, session)

