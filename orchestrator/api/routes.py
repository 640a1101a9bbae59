"""``/v1``: the privacy team's HTTP API (SPEC "HTTP API"). Bearer tokens only; every action is audited with
the caller's token name and role as its actor (``api:NAME(ROLE)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api import scope
from orchestrator.api.auth import Action, Principal, Role, TokenStore
from orchestrator.api.errors import ApiError, ErrorBody
from orchestrator.api.schemas import ErasureRequestIn, HoldIn, HoldRelease, RequestPage, RequestStatus, StatusOut
from orchestrator.events import request_for_event
from orchestrator.ledger import stored_idempotency_key, valid_cursor
from orchestrator.reports import erasure_report
from orchestrator.service import Lethe

bearer = HTTPBearer(auto_error=False, description="A token from the LETHE_API_TOKENS file.")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Bad input", 401: "No token, or an unknown one", 403: "The token's role may not do this",
            404: "Unknown request", 409: "Conflict with the request's state or idempotency key",
            422: "Invalid input (nothing was created or changed)", 503: "Ledger or configuration unavailable"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in (401, 403, *codes, 422, 503)}


def lethe_of(request: Request) -> Lethe:
    lethe: Lethe = request.app.state.lethe
    return lethe


def require(action: Action) -> Callable[..., Principal]:
    """A dependency: the caller's principal if its role may perform ``action``, else 401/403."""

    def dependency(request: Request,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        tokens: TokenStore = request.app.state.tokens
        if not tokens.configured:
            raise ApiError(401, "unauthorized", "the API accepts no token: LETHE_API_TOKENS is not set", CHALLENGE)
        if credentials is None:
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'", CHALLENGE)
        principal = tokens.lookup(credentials.credentials)
        if tokens.error:
            raise ApiError(503, "auth_unavailable", "the token file cannot be read; an operator must fix it")
        if principal is None:
            raise ApiError(401, "unauthorized", "unknown token", CHALLENGE)
        if not principal.may(action):
            raise ApiError(403, "forbidden", f"the {principal.role.value} role may not {action.value} requests")
        return principal

    return dependency


router = APIRouter(prefix="/v1", tags=["erasure requests"])
REQUEST_ID = "/erasure-requests/{request_id}"


@router.post(
    "/erasure-requests", status_code=202, response_model=None,
    responses={202: {"model": StatusOut, "description": "Filed: the new request's status object"},
               200: {"model": StatusOut, "description": "A replay of the same Idempotency-Key and body"},
               **_errors(400, 409)},
)
def create_request(
    body: ErasureRequestIn,
    request: Request,
    principal: Annotated[Principal, Depends(require(Action.CREATE))],
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
        description="A retried POST with the same key and body returns the same request (200); the same key "
        "with another body is 409. Keys are scoped to the token's name and kept 30 days.")] = None,
) -> JSONResponse:
    """File an erasure request for one subject, or (admin) for a whole dataset declared in the data map."""
    if body.dataset is not None:
        if principal.role is not Role.ADMIN:
            raise ApiError(403, "forbidden", "dataset scope needs the admin role")
        if body.subject is not None:
            raise ApiError(422, "invalid_request", "give subject or dataset, not both")
        if body.dataset not in lethe_of(request).load_map().datasets:
            raise ApiError(422, "unknown_dataset", "the data map declares no dataset of that name")
    elif body.subject is None:
        raise ApiError(422, "invalid_request", "subject is required, e.g. {\"subject\": {\"user_id\": \"…\"}}")
    lethe = lethe_of(request)
    key = None if idempotency_key is None else stored_idempotency_key("api", idempotency_key, principal.name)
    request_id, created = lethe.submit(body.subject or {}, dry_run=body.dry_run, regime=body.regime,
                                       idempotency_key=key, actor=principal.actor("api"),
                                       dataset=body.dataset, requested_by=principal.name)
    status = scope.visible(principal, lethe.ledger.status(request_id))
    return JSONResponse(status, status_code=202 if created else 200,
                        headers={"Location": f"/v1/erasure-requests/{request_id}"})


@router.get("/erasure-requests", response_model=RequestPage, responses=_errors(400))
def list_requests(
    request: Request,
    principal: Annotated[Principal, Depends(require(Action.READ))],
    status: Annotated[RequestStatus | None, Query(description="Only requests with this status.")] = None,
    overdue: Annotated[bool, Query(description="Only unfinished requests past due.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page.")] = None,
) -> dict[str, Any]:
    """Requests, newest first, a page at a time (a requester's: those filed under its own token name)."""
    if cursor is not None and not valid_cursor(cursor):
        raise ApiError(400, "bad_cursor", "cursor is not one this API returned")
    page = lethe_of(request).ledger.list_requests(status=status, overdue=overdue, limit=limit, cursor=cursor,
                                                  requested_by=scope.owner(principal))
    return scope.visible_page(principal, page)


@router.get("/erasure-requests/by-event", response_model=None, responses={200: {"model": StatusOut}, **_errors(404)})
def get_request_by_event(
    request: Request,
    principal: Annotated[Principal, Depends(require(Action.READ))],
    source: Annotated[str, Query(min_length=1, max_length=500, description="The event's `source`.")],
    event_id: Annotated[str, Query(alias="id", min_length=1, max_length=500, description="The event's `id`.")],
) -> JSONResponse:
    """The status object of the request a platform event (``source``, ``id``) made: 404 if it made none
    (dead-lettered, ignored, or filed more than 30 days ago), as for `lethe status --event`."""
    ledger = lethe_of(request).ledger
    request_id = request_for_event(ledger, source, event_id)
    status = ledger.status(request_id) if request_id is not None else None
    if status is None or not scope.may_see(principal, status):  # a requester learns nothing of others' events
        raise ApiError(404, "not_found", "no request was filed for this event (or it was more than 30 days ago)")
    return JSONResponse(scope.visible(principal, status))


@router.get(REQUEST_ID, response_model=None, responses={200: {"model": StatusOut}, **_errors(404)})
def get_request(request_id: str, request: Request,
                principal: Annotated[Principal, Depends(require(Action.READ))]) -> JSONResponse:
    """A request's status object (404 for a request another requester filed)."""
    return JSONResponse(scope.visible(principal, lethe_of(request).ledger.status(request_id)))


@router.post(REQUEST_ID + "/retry", status_code=202, response_model=None,
             responses={202: {"model": StatusOut}, **_errors(404, 409)})
def retry_request(request_id: str, request: Request,
                  principal: Annotated[Principal, Depends(require(Action.RETRY))]) -> JSONResponse:
    """Move the request's failed tasks back to pending and dispatch them again."""
    lethe = lethe_of(request)
    lethe.retry(request_id, actor=principal.actor("api"))
    return JSONResponse(lethe.ledger.status(request_id), status_code=202)


@router.post(REQUEST_ID + "/cancel", response_model=None,
             responses={200: {"model": StatusOut}, **_errors(404, 409)})
def cancel_request(request_id: str, request: Request,
                   principal: Annotated[Principal, Depends(require(Action.CANCEL))]) -> JSONResponse:
    """Cancel a request that has not started executing (409 once any task started)."""
    lethe = lethe_of(request)
    lethe.cancel(request_id, actor=principal.actor("api"))
    return JSONResponse(lethe.ledger.status(request_id))


@router.post(REQUEST_ID + "/approve", response_model=None,
             responses={200: {"model": StatusOut}, **_errors(404, 409)})
def approve_request(request_id: str, request: Request,
                    principal: Annotated[Principal, Depends(require(Action.APPROVE))]) -> JSONResponse:
    """Let a request waiting on a target's max_items, or a dataset request, go ahead (admin)."""
    lethe = lethe_of(request)
    lethe.approve(request_id, actor=principal.actor("api"))
    return JSONResponse(lethe.ledger.status(request_id))


@router.get(REQUEST_ID + "/certificate", response_model=None,
            responses={200: {"description": "The signed certificate (JSON); verify it with the public key "
                             "from `lethe certificate --public-key`"}, **_errors(404, 409)})
def get_certificate(request_id: str, request: Request,
                    principal: Annotated[Principal, Depends(require(Action.READ))]) -> JSONResponse:
    """The signed erasure certificate of a completed request (409 while there is none; 404 for a request
    another requester filed)."""
    ledger = lethe_of(request).ledger
    scope.visible(principal, ledger.status(request_id))
    return JSONResponse(ledger.certificate(request_id))


@router.get(REQUEST_ID + "/report", response_model=None,
            responses={200: {"description": "The signed report of what was and was not erased (JSON, "
                             "`kind: erasure-report`); it verifies as a certificate does"}, **_errors(404)})
def get_report(request_id: str, request: Request,
               principal: Annotated[Principal, Depends(require(Action.READ))]) -> JSONResponse:
    """A signed report of what a request erased and did not, per target, in any status (a failed or partial
    request has no certificate); 404 for a request another requester filed."""
    ledger = lethe_of(request).ledger
    return JSONResponse(erasure_report(scope.visible(principal, ledger.status(request_id)), ledger.signing_key))


@router.get("/holds", responses=_errors())
def list_holds(request: Request, _principal: Annotated[Principal, Depends(require(Action.HOLD))]) -> dict[str, Any]:
    """Active legal holds, subjects as keyed hashes (admin)."""
    return {"items": lethe_of(request).ledger.list_holds()}


@router.post("/holds", status_code=201, responses=_errors(409))
def add_hold(body: HoldIn, request: Request,
             principal: Annotated[Principal, Depends(require(Action.HOLD))]) -> dict[str, Any]:
    """Place a legal hold on a subject (admin): their requests wait on_hold, nothing of theirs is deleted."""
    held = lethe_of(request).add_hold(body.subject, body.reason, body.until, actor=principal.actor("api"))
    return {"held": held}


@router.post("/holds/release", responses=_errors(409))
def release_hold(body: HoldRelease, request: Request,
                 principal: Annotated[Principal, Depends(require(Action.HOLD))]) -> dict[str, Any]:
    """Release a subject's holds (admin); their waiting requests resume."""
    lethe_of(request).release_hold(body.subject, actor=principal.actor("api"))
    return {"released": True}
