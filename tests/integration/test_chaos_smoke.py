"""A small `make chaos`: workers SIGKILLed, the broker restarted, S3 faults and a ledger cut lose nothing."""

from __future__ import annotations

import io

import pytest

from tests.chaos.__main__ import Options, ok, run

pytestmark = pytest.mark.integration


def test_chaos_smoke_loses_nothing_and_deletes_nothing_extra() -> None:
    """Every request completes once, bystanders keep every version, subjects keep none, ledger verifies."""
    out = io.StringIO()
    figures = run(Options(requests=15, objects=2, workers=2, fault_rate=0.10, kill_every=3.0, redis_restarts=1,
                          time_limit=240, lease=6), out=out)
    assert ok(figures), out.getvalue()
    assert figures["worker_kills"] >= 1 and figures["events"], out.getvalue()
