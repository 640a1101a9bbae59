"""The Grafana dashboard in deploy/grafana/ queries only metrics that /metrics exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator.api.metrics import BROKER_METRIC_NAMES, METRIC_NAMES

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "lethe.json"


def test_dashboard_uses_only_exposed_metrics() -> None:
    """Every lethe_* series a panel queries is one of ours (histograms by their _bucket series)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\blethe_[a-z_]+", e)}
    exposed = set(METRIC_NAMES) | set(BROKER_METRIC_NAMES) | {f"{n}_bucket" for n in METRIC_NAMES}
    assert used and used <= exposed, used - exposed
    assert {"lethe_requests", "lethe_items_erased_total", "lethe_requests_overdue",
            "lethe_oldest_open_request_age_seconds", "lethe_task_duration_seconds_bucket"} <= used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
