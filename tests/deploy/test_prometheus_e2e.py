"""End to end: a real Prometheus scrapes a /metrics endpoint and evaluates the funnel rules.

The test here serves a `Metrics` registry from a small aiohttp server to the
`PrometheusServer` of tests/support/prometheus.py; tests/stream/test_worker_metrics.py
points the same server at a real worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics
from tests.support.prometheus import check_funnel, running_prometheus, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_funnel_through_real_prometheus(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())

    async def drive() -> None:
        for _ in range(10):
            metrics.stage_move("lead", "mql")
        for _ in range(4):
            metrics.stage_move("mql", "sal")

    async with serving(metrics) as target, running_prometheus(tmp_path, target) as prom:
        await check_funnel(prom, drive)
