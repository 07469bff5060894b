"""A real Prometheus for tests: scrapes one target, with the repository's recording rules.

`PrometheusServer` runs the Debian `prometheus` binary on 127.0.0.1 with a throw-away
config (1 s scrape and rule evaluation) against any scrape target `host:port`;
`check_funnel` drives the target and checks the funnel rules' values.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from pipeline.devkafka.ports import free_port
from pipeline.metrics import Metrics, metrics_handler

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "recording_rules.yml"
JOB = "leadflow-worker"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus binary not found: install it with `apt-get install prometheus`")
    return path


class PrometheusServer:
    """A real Prometheus scraping `target` every second, with the recording rules loaded."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        # Group intervals (30 s, 1 m in production) would make a test wait minutes: drop them
        # so every group runs at the 1 s global evaluation interval.
        doc = yaml.safe_load(RULES.read_text())
        for group in doc["groups"]:
            group.pop("interval", None)
        (workdir / "rules.yml").write_text(yaml.safe_dump(doc))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [prometheus_binary(), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def failure(self, what: str) -> str:
        return f"{what}\n--- prometheus log ---\n{self.log.read_text()[-3000:]}"

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None and self.proc.poll() is None, \
                self.failure("prometheus exited")
            try:
                async with http.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        pytest.fail(self.failure("prometheus not ready in time"))

    async def query(self, http: aiohttp.ClientSession, promql: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (a list of {metric, value: [ts, "str"]})."""
        async with http.get(f"{self.url}/api/v1/query", params={"query": promql}) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def scalar(self, http: aiohttp.ClientSession, promql: str) -> float | None:
        """The single value of a one-sample query; None when the result is empty."""
        result = await self.query(http, promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    async def wait_value(self, http: aiohttp.ClientSession, promql: str,
                         expected: float, timeout: float = 30) -> float:
        """Poll `promql` until it equals `expected` (to 1e-9); fail with the last value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: float | None = None
        while loop.time() < deadline:
            last = await self.scalar(http, promql)
            if last is not None and math.isclose(last, expected, rel_tol=1e-9, abs_tol=1e-12):
                return last
            await asyncio.sleep(0.5)
        pytest.fail(self.failure(f"{promql} = {last}, expected {expected}"))


@asynccontextmanager
async def running_prometheus(workdir: Path, target: str) -> AsyncIterator[PrometheusServer]:
    prom = PrometheusServer(workdir, target)
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


async def check_funnel(prom: PrometheusServer, drive: Callable[[], Awaitable[None]]) -> None:
    """Wait for a first scrape, run `drive` (10 leads -> MQL, 4 MQL -> SAL), check values."""
    async with aiohttp.ClientSession() as http:
        await prom.wait_ready(http)
        # The zero-valued series must be scraped before the moves, or increase() has no
        # starting point; `up` alone does not prove the series were there.
        await prom.wait_value(http, f'up{{job="{JOB}"}}', 1)
        await prom.wait_value(
            http, 'sum(leadflow_stage_moves_total{from_stage="lead", to_stage="mql"})', 0)
        await drive()
        await prom.wait_value(http, 'sum(leadflow_stage_moves_total{to_stage="sal"})', 4)
        await prom.wait_value(http, 'sum(leadflow_stage_moves_total{to_stage="mql"})', 10)
        ratio = await prom.wait_value(http, "leadflow:funnel_mql_to_sal:ratio_rate1d", 0.4)
        assert ratio == pytest.approx(0.4)
        # No SAL qualified yet: a defined 0, not "no data".
        await prom.wait_value(http, "leadflow:funnel_sal_to_sql:ratio_rate1d", 0)


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
