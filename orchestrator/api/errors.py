"""Every error the API returns has one shape: ``{"error": {"code": "...", "message": "..."}}``.

Bad input is a 4xx, never a 500. Messages never repeat a submitted identifier value (InvalidIdentifier's
messages do not, and pydantic's messages are built without the input).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.config import ConfigError
from orchestrator.datamap import DataMapError
from orchestrator.identifiers import InvalidIdentifier
from orchestrator.identities import ResolutionUnavailable
from orchestrator.ledger import IdempotencyConflict, InvalidInput, LedgerError, UnknownRequest
from orchestrator.logs import get_logger

log = get_logger("lethe.api")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 406: "not_acceptable", 413: "too_large", 415: "unsupported_media_type"}


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{loc[:80]}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_for(exc: Exception) -> ApiError | None:
    """The API error for one of lethe's own exceptions, or None for an unexpected one."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidIdentifier):
        return ApiError(422, "invalid_identifier", str(exc))
    if isinstance(exc, UnknownRequest):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, IdempotencyConflict):
        return ApiError(409, "idempotency_conflict", str(exc))
    if isinstance(exc, InvalidInput):
        return ApiError(422, "invalid_input", str(exc))
    if isinstance(exc, LedgerError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, DataMapError | ConfigError):
        log.error("api.misconfigured", error=str(exc))
        return ApiError(503, "misconfigured", "the service is misconfigured; an operator must fix it (see logs)")
    if isinstance(exc, ResolutionUnavailable):  # nothing was filed: the same request again later is safe
        return ApiError(503, "resolution_unavailable", str(exc))
    if isinstance(exc, OperationalError):
        log.error("api.ledger_unavailable", error=type(exc.orig).__name__ if exc.orig else "OperationalError")
        return ApiError(503, "ledger_unavailable", "the ledger database is unavailable; try again later")
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        return error_response(422, "invalid_request", _validation_message(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    async def _lethe_error(_request: Request, exc: Exception) -> JSONResponse:
        known = error_for(exc)
        assert known is not None
        return error_response(known.status, known.code, known.message, known.headers)

    for kind in (InvalidIdentifier, LedgerError, DataMapError, ConfigError, OperationalError, ResolutionUnavailable):
        app.add_exception_handler(kind, _lethe_error)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        known = error_for(exc)
        if known is not None:
            return error_response(known.status, known.code, known.message, known.headers)
        # Exception text can carry vendor detail: log the type only, answer without detail.
        log.error("api.unexpected_error", error=type(exc).__name__)
        return error_response(500, "internal", "internal error; see the service logs")
