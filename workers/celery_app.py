"""A module-level Celery app for Celery's own tools (`celery -A workers.celery_app inspect ping`, Flower).

lethe's processes build their app through ``orchestrator.service.Lethe``; this one is the same, configured
from the environment (LETHE_*), for tools that need an importable ``app``.
"""

from orchestrator.service import Lethe

app = Lethe().app
