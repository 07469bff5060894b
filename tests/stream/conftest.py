"""Fixtures for stream tests: isolated settings per test and real worker processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.stream.workers import Isolated, WorkerProcess


@pytest.fixture
async def isolated(kafka_bootstrap: str, tmp_path: Path) -> Isolated:
    """Unique topics (created) and app id for one test."""
    from pipeline.kafka.topics import ensure_topics, topic_specs

    iso = Isolated(kafka_bootstrap, tmp_path / "home")
    await ensure_topics(kafka_bootstrap, topic_specs(iso.settings, teams=["sales", "enterprise",
                                                                          "smb", "emea"]))
    return iso


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers; every one is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def make(iso: Isolated, **kw: Any) -> WorkerProcess:
        w = WorkerProcess(iso, tmp_path / f"worker-{len(started)}.log", **kw)
        w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer: not the project's code."""
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


