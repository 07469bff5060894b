"""Helpers for collector tests: start a real collector, read topics back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.collector.app import create_app
from pipeline.kafka.broker import free_port
from pipeline.settings import Settings, Topics

WRITE_KEYS = {"web-key": "web", "email-key": "email", "product-key": "product", "crm-key": "crm"}


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
