"""The HTTP API (``/v1``), the operators' dashboard and Prometheus metrics, served by ``lethe api``."""

from orchestrator.api.app import create_app

__all__ = ["create_app"]
