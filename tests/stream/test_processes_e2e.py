"""`leadflow worker --processes 2` against the real broker: one app, two processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.devkafka.ports import free_ports
from tests.support.scenario import offline_moves, scenario
from tests.support.workers import REPO, Isolated, consume, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _known_from_the_start(user: str) -> list[tuple[str, dict[str, Any]]]:
    # Every message carries the userId, so all of a lead's messages share a key and a
    # partition: their order, and so the expected moves, do not depend on the stitch.
    return [(src, {**body, "userId": user}) for src, body in scenario(f"anon-{user}", user)
            if src == "web"]


async def _ready(port: int) -> dict[str, Any] | None:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{port}/readyz") as r:
            body = orjson.loads(await r.read())
            return dict(body) if r.status == 200 else None
    except (aiohttp.ClientError, OSError, ValueError):
        return None


async def _lead(port: int, lead: str) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{port}/leads/{lead}") as r:
        return r.status, orjson.loads(await r.read())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose: it runs nothing.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_two_processes_share_the_partitions_and_stop_together(
    isolated: Isolated, producer: AIOKafkaProducer, tmp_path: Path,
) -> None:
    base = free_ports(2)
    log = tmp_path / "processes.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "worker", "--processes", "2",
             "--web-port", str(base)],
            env={**os.environ, **isolated.env}, cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def tail() -> str:
            return log.read_text(errors="replace")[-3000:]

        async def both_ready() -> list[dict[str, Any] | None]:
            assert proc.poll() is None, tail()
            return [await _ready(base), await _ready(base + 1)]

        states = await poll(both_ready, lambda r: all(r), timeout=180)
        # Kafka spread the partitions over both processes (the group's 4 partitions).
        assert all(s is not None and s["assigned_partitions"] > 0 for s in states), states
        started = re.search(r"pids ([\d, ]+)", log.read_text(errors="replace"))
        assert started is not None, tail()
        pids = [int(p) for p in started.group(1).split(", ")]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        # Each process has a state folder of its own.
        dirs = sorted(p.name for p in (isolated.settings.worker_state_dir).iterdir())
        assert dirs == ["process-0", "process-1"]

        leads = [f"u-{i:02d}" for i in range(12)]
        msgs = [m for lead in leads for m in _known_from_the_start(lead)]
        topic = isolated.settings.topics.web
        for _, body in msgs:
            await producer.send(topic, orjson.dumps(body), key=body["userId"].encode())
        await producer.flush()
        expected = offline_moves(msgs)
        got = await consume(isolated.bootstrap, [isolated.settings.topics.stage_changes],
                            until=lambda o: len(o) >= len(expected), timeout=120)
        applied = [(d["lead_id"], d["from_stage"], d["to_stage"]) for _, _, d in got
                   if d.get("status", "applied") == "applied"]
        by_lead = sorted(applied, key=lambda m: m[0])  # stable: keeps each lead's order
        assert by_lead == sorted(expected, key=lambda m: m[0]), tail()

        # One port answers for every lead: the other process's leads are routed there.
        for lead in leads:
            status, doc = await _lead(base, lead)
            assert status == 200, (lead, doc)
            assert doc["events_seen"] == len(_known_from_the_start(lead))

        os.killpg(proc.pid, signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 90) == 0, tail()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not any(_alive(p) for p in pids), tail()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
