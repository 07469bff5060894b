"""Isolated settings per test, real worker processes, reading their outputs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.devkafka.ports import free_port
from pipeline.settings import Settings, Topics

REPO = Path(__file__).resolve().parents[2]
#: The routing teams every isolated test gets topics for.
TEAMS = ["sales", "enterprise", "smb", "emea"]


class Isolated:
    """Settings with a unique app id and topic names, as environment variables too."""

    def __init__(self, bootstrap: str, home: Path, *, partitions: int = 4,
                 replication_factor: int = 1,
                 extra_env: dict[str, str] | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.prefix = f"t{tag}"
        names = {f: f"{self.prefix}.{v}" for f, v in Topics().model_dump().items()}
        self.env = {
            "LEADFLOW_BOOTSTRAP_SERVERS": bootstrap,
            "LEADFLOW_APP_ID": f"lf-{tag}",
            "LEADFLOW_HOME": str(home),
            "LEADFLOW_PARTITIONS": str(partitions),
            "LEADFLOW_REPLICATION_FACTOR": str(replication_factor),
            "LEADFLOW_STANDBY_REPLICAS": "0",
            **{f"LEADFLOW_TOPIC_{k.upper()}": v for k, v in names.items()},
            **(extra_env or {}),
        }
        self.settings = Settings(
            bootstrap_servers=bootstrap, app_id=self.env["LEADFLOW_APP_ID"], home=home,
            partitions=partitions, replication_factor=replication_factor, standby_replicas=0,
            topics=Topics(**names),
        )


class WorkerProcess:
    """A real `leadflow worker` process, as an operator would run it."""

    def __init__(self, iso: Isolated, log: Path, *, web_port: int | None = None) -> None:
        self.iso = iso
        self.web_port = web_port or free_port()
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.iso.env, "LEADFLOW_WEB_PORT": str(self.web_port)}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "worker", "--loglevel", "info"],
            env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    async def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        import aiohttp

        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with aiohttp.ClientSession() as s, s.get(self.url(path), headers=headers) as r:
            body = await r.read()
            return r.status, orjson.loads(body) if body else None

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples on the worker's /metrics (0 when it has none),
        of the samples with these label values when `labels` are given."""
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as s, s.get(self.url("/metrics")) as r:
            assert r.status == 200, r.status
            text = await r.text()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == name
                   and all(sample.labels.get(k) == v for k, v in labels.items()))

    async def partitions(self, topic: str) -> set[int]:
        """Partitions of `topic` this worker consumes now, from its /metrics (the offsets
        it reports per assigned partition with something committed)."""
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as s, s.get(self.url("/metrics")) as r:
            assert r.status == 200, r.status
            text = await r.text()
        return {int(sample.labels["partition"])
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "leadflow_consumer_highwater"
                and sample.labels.get("topic") == topic}

    async def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            try:
                status, _ = await self.get("/readyz")
                if status == 200:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


async def make_isolated(bootstrap: str, home: Path, *, partitions: int = 4,
                        replication_factor: int = 1,
                        extra_env: dict[str, str] | None = None) -> Isolated:
    """Isolated settings (unique app id and topics, created on the broker)."""
    from pipeline.kafka.topics import ensure_topics, topic_specs

    iso = Isolated(bootstrap, home, partitions=partitions,
                   replication_factor=replication_factor, extra_env=extra_env)
    await ensure_topics(bootstrap, topic_specs(iso.settings, teams=TEAMS))
    return iso


async def poll(get: Callable[[], Any], ok: Callable[[Any], bool], timeout: float) -> Any:
    """Call `get` until `ok(result)` (every 0.2 s), else fail after `timeout` s with the last."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await get()
        if ok(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met in {timeout}s; last: {last}")


async def consume(bootstrap: str, topics: list[str], *, until: Callable[[list[Any]], bool],
                  timeout: float = 90.0) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    """Read JSON messages from the start of `topics` until `until(messages)` or timeout."""
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, isolation_level="read_committed")
    await c.start()
    out: list[tuple[str, bytes | None, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(out):
            batch = await c.getmany(timeout_ms=500)
            for tp, recs in batch.items():
                out.extend((tp.topic, r.key, orjson.loads(r.value or b"null")) for r in recs)
    finally:
        await c.stop()
    return out
