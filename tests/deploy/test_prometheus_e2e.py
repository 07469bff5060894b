"""End to end: a real Prometheus scrapes a /metrics endpoint and evaluates the funnel rules.

The test here serves a `Metrics` registry from a small aiohttp server to the
`PrometheusServer` of tests/support/prometheus.py; tests/stream/test_worker_metrics.py
points the same server at a real worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from pipeline.devkafka.ports import free_port
from pipeline.metrics import Metrics, metrics_handler
from tests.support.prometheus import check_funnel, running_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@asynccontextmanager
async def serving(metrics: Metrics) -> AsyncIterator[str]:
    """Serve `metrics` on /metrics at 127.0.0.1:<free port>; yields "host:port"."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_funnel_through_real_prometheus(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())

    async def drive() -> None:
        for _ in range(10):
            metrics.stage_move("lead", "mql")
        for _ in range(4):
            metrics.stage_move("mql", "sal")

    async with serving(metrics) as target, running_prometheus(tmp_path, target) as prom:
        await check_funnel(prom, drive)
