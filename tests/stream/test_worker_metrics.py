"""A real Prometheus scrapes a real worker: funnel queries return what the test produced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.prometheus import check_funnel, running_prometheus
from tests.support.workers import Isolated, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def test_prometheus_scrapes_worker_stage_moves_and_funnel(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    worker = worker_factory(isolated)
    await worker.wait_ready()
    t = isolated.settings.topics

    async def drive() -> None:
        # 10 leads request a demo (visitor -> lead -> mql), sales accepts 4 of them (-> sal)
        for i in range(10):
            user = f"pm-{i}"
            for n, body in enumerate([
                {"type": "identify", "traits": {"email": f"{user}@gmail.com"}},
                {"type": "track", "event": "Demo Requested"},
            ]):
                msg = {**body, "messageId": f"{user}-{n}", "userId": user, "timestamp": _now()}
                await producer.send_and_wait(t.web, orjson.dumps(msg), key=user.encode())
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            for i in range(10):  # wait until every lead is an MQL before sales acts
                while True:
                    async with http.get(worker.url(f"/leads/pm-{i}")) as r:
                        if r.status == 200 and (await r.json())["stage"] == "mql":
                            break
                    assert time.monotonic() < deadline, worker.tail()
                    await asyncio.sleep(0.2)
        for i in range(4):
            user = f"pm-{i}"
            msg = {"type": "track", "event": "Lead Accepted", "messageId": f"{user}-acc",
                   "userId": user, "timestamp": _now()}
            await producer.send_and_wait(t.crm, orjson.dumps(msg), key=user.encode())

    async with running_prometheus(tmp_path, f"127.0.0.1:{worker.web_port}") as prom:
        await check_funnel(prom, drive)
    async with aiohttp.ClientSession() as http, http.get(worker.url("/metrics")) as r:
        text = await r.text()
    assert r.headers["Content-Type"].startswith("text/plain")
    assert 'leadflow_stage_moves_total{from_stage="mql",to_stage="sal"} 4.0' in text
    assert 'leadflow_events_in_total{source="web",type="track"} 10.0' in text
