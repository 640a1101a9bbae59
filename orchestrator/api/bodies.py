"""Request bodies, before anything reads them: at most 64 KiB, and the ``/v1`` API reads JSON.

``BodyPolicy`` is ASGI middleware in front of routing and authentication, so an unauthenticated 150 MB POST
costs nothing: a ``Content-Length`` over the limit is answered 413 without reading a byte, and a streamed
(chunked) body is counted as it arrives and refused once it passes the limit, before the rest is read.

The ``/v1`` routes take JSON whatever ``Content-Type`` says: ``curl -d`` sends
``application/x-www-form-urlencoded`` by default, and a body that is not JSON gets a clear 400 either way.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_response

MAX_BODY = 64 * 1024
TOO_LARGE = f"the request body is over {MAX_BODY // 1024} KiB"
JSON_PREFIX = "/v1/"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; the app answers it 413."""

    def __init__(self) -> None:
        super().__init__(413, TOO_LARGE, headers={"Connection": "close"})  # do not read the rest


class BodyPolicy:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type" or not self._json_route(scope)]
        if self._json_route(scope):
            headers.append((b"content-type", b"application/json"))
        lengths = [v for k, v in headers if k == b"content-length"]
        if lengths and not all(v.isdigit() for v in lengths):
            await error_response(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
            return
        if any(int(v) > self.max_body for v in lengths):
            await error_response(413, "too_large", TOO_LARGE, {"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        await self.app({**scope, "headers": headers}, counted, send)

    @staticmethod
    def _json_route(scope: Scope) -> bool:
        return str(scope.get("path", "")).startswith(JSON_PREFIX) and scope.get("method") in ("POST", "PUT", "PATCH")
