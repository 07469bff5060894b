"""Helpers for collector tests: start a real collector, read topics back."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.collector.app import create_app
from pipeline.devkafka.ports import free_port
from pipeline.settings import Settings, Topics

WRITE_KEYS = {"web-key": "web", "email-key": "email", "product-key": "product", "crm-key": "crm"}


def basic(key: str) -> dict[str, str]:
    """The HTTP Basic header Segment libraries send: the write key as user, no password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@dataclass
class Server:
    """A running collector: its base URL, settings and the Kafka it writes to."""

    url: str
    settings: Settings
    bootstrap: str

    @property
    def topics(self) -> Topics:
        return self.settings.topics


async def start_collector(settings: Settings, bootstrap: str) -> tuple[web.AppRunner, str]:
    """Start the collector app on a free 127.0.0.1 port; returns the runner and base URL."""
    runner = web.AppRunner(create_app(settings, bootstrap=bootstrap), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def collector_settings(names: dict[str, str], **kw: Any) -> Settings:
    """Settings with test topics and write keys; `kw` overrides collector settings."""
    base: dict[str, Any] = dict(
        topics=Topics(**names), write_keys=WRITE_KEYS, collector_rate_per_s=1000.0,
        collector_burst=10_000, collector_ip_rate_per_s=1000.0, collector_ip_burst=10_000,
        collector_ack_timeout_s=15.0,
    )
    return Settings(**{**base, **kw})


MakeServer = Callable[..., Awaitable[Server]]


async def consume(
    bootstrap: str, topic: str, n: int, timeout: float = 30.0
) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Read `n` records (key, decoded JSON value) from the start of `topic`."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend((r.key, orjson.loads(r.value)) for r in records)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return out


async def count(bootstrap: str, topic: str) -> int:
    """How many records a topic holds (sum of its end offsets), without reading them."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        assert parts, f"topic {topic} has no partitions"
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def post_sentinel(srv: Server, key: str = "web-key") -> str:
    """Send one valid track call through the collector (answered 200, so it is on Kafka) and
    return its messageId. Sent after everything else, it is the last record of its topic
    (one partition): a test reads up to it instead of waiting a while for stragglers."""
    mid = f"sentinel-{uuid.uuid4().hex[:12]}"
    body = {"type": "track", "event": "Sentinel", "userId": "sentinel", "messageId": mid}
    async with aiohttp.ClientSession() as s, \
            s.post(f"{srv.url}/v1/track", json=body, headers=basic(key)) as r:
        assert r.status == 200, await r.text()
    return mid
