"""The FastAPI application: the ``/v1`` API, the dashboard, ``/healthz``, ``/metrics``, ``/openapi.json`` and
``/docs`` (Swagger UI, its script and styles served from the fastapi-offline package: no CDN)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api import dashboard, errors, metrics, routes
from orchestrator.api.auth import TokenStore
from orchestrator.api.bodies import BodyPolicy
from orchestrator.api.broker import BrokerView
from orchestrator.api.schemas import Health
from orchestrator.service import Lethe

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Headers every response carries (pages add their own Content-Security-Policy)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(lethe: Lethe) -> FastAPI:
    """The API and dashboard over one Lethe. Tokens come from ``lethe.settings.api_tokens`` (read now: a
    missing or malformed file raises ConfigError; unset, every call is refused)."""
    tokens = TokenStore(lethe.settings.api_tokens)
    app = FastAPIOffline(
        title="lethe",
        version="1",
        summary="Erase a data subject everywhere, verify it, and prove it.",
        description="Privacy-team API of lethe, the GDPR/CCPA erasure orchestrator. Every call but /healthz and "
        "/metrics needs `Authorization: Bearer <token>` (LETHE_API_TOKENS). Errors are "
        '`{"error": {"code": "...", "message": "..."}}`.',
        docs_url="/docs",
        redoc_url=None,
        static_url="/static/docs",
        favicon_url="/static/docs/favicon.png",
    )
    app.state.lethe = lethe
    app.state.tokens = tokens
    # One ledger reading and one broker probe at a time, shared by /metrics and the dashboard.
    app.state.snapshots = metrics.SnapshotCache(lethe)
    app.state.broker = BrokerView(lethe)
    registry = metrics.registry_for(app.state.snapshots, app.state.broker)
    errors.install(app)
    app.add_middleware(BodyPolicy)  # before routing and auth: a huge body is refused before it is read
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers. Open, no token."""
        return {"status": "ok"}

    @app.head("/healthz", include_in_schema=False)
    def healthz_head() -> Response:
        return Response(status_code=200)

    @app.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}})
    def prometheus_metrics() -> Response:
        """Prometheus text from the ledger (read at most every 5 s) and the broker. Open, no token."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(routes.router)
    app.include_router(dashboard.router)
    return app
