"""Fixtures for reliability tests: isolated topics, worker processes, a plain producer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.reliability.harness import make_isolated
from tests.stream.workers import Isolated, WorkerProcess


@pytest.fixture
async def isolated(kafka_bootstrap: str, tmp_path: Path) -> Isolated:
    """Unique topics (created) and app id for one test, against the session broker."""
    return await make_isolated(kafka_bootstrap, tmp_path / "home")


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers; every one still running is stopped at the end of the test."""
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

