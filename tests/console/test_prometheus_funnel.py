"""The console's funnel from a real Prometheus that scrapes a metrics registry and
evaluates deploy/prometheus/recording_rules.yml (tests/support/prometheus.py)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from pipeline.console.sources import PrometheusClient, PrometheusUnreachable
from pipeline.devkafka.ports import free_port
from pipeline.metrics import Metrics
from tests.support.prometheus import JOB, running_prometheus, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_funnel_reads_the_recorded_kpis(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry(), teams=["sales"])
    async with serving(metrics) as target, running_prometheus(tmp_path, target) as prom, \
            aiohttp.ClientSession() as http:
        await prom.wait_ready(http)
        await prom.wait_value(http, f'up{{job="{JOB}"}}', 1)
        # zero-valued series scraped first, so that increase() has a starting point
        await prom.wait_value(
            http, 'sum(leadflow_stage_moves_total{from_stage="lead", to_stage="mql"})', 0)
        await prom.wait_value(http, 'sum(leadflow_alerts_total{team="sales"})', 0)
        for _ in range(10):
            metrics.stage_move("lead", "mql")
        for _ in range(4):
            metrics.stage_move("mql", "sal")
        for _ in range(4):
            metrics.alerts.labels(team="sales", kind="instant").inc()
        metrics.sla_breaches.labels(team="sales", kind="instant").inc()
        await prom.wait_value(http, "leadflow:funnel_mql_to_sal:ratio_rate1d", 0.4)
        await prom.wait_value(http, 'leadflow_team:sla_breach:ratio_rate1h{team="sales"}', 0.25)

        f = await PrometheusClient(prom.url).funnel(["sales"])
    assert f.ratio("mql_to_sal").value == pytest.approx(0.4)
    assert f.ratio("sal_to_sql").value == 0  # accepted leads, none qualified: a defined 0
    (sales,) = f.teams
    assert sales.team == "sales" and sales.breach_ratio == pytest.approx(0.25)
    # increase() over a few seconds of samples extrapolates to the window: only its sign holds
    assert sales.alerts > 0


async def test_no_prometheus_is_named() -> None:
    with pytest.raises(PrometheusUnreachable, match="LEADFLOW_CONSOLE_PROMETHEUS_URL"):
        await PrometheusClient(f"http://127.0.0.1:{free_port()}").funnel(["sales"])
