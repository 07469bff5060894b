"""Shared fixtures: a real Kafka broker for the whole session and throw-away topics.

`kafka_bootstrap` uses LEADFLOW_BOOTSTRAP_SERVERS when set (an existing broker, e.g. from
docker-compose.kafka.yml); otherwise it starts a LocalBroker in a temporary folder, with jars
from the shared cache (LEADFLOW_KAFKA_JARS, else <repo>/.leadflow/kafka/lib-<version>, resolved
from Maven Central on the very first run), and stops it when the session ends.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import settings as hypothesis_settings

from pipeline.devkafka.broker import LocalBroker
from pipeline.devkafka.jars import JARS_ENV, resolve_jars
from pipeline.kafka.topics import TopicSpec, ensure_topics
from pipeline.settings import KAFKA_VERSION
from tests.support.workers import Isolated, WorkerProcess, make_isolated

REPO = Path(__file__).resolve().parents[1]


# Property tests share two cores with brokers and workers: Hypothesis' 200 ms per-example
# deadline would fail them on a slow moment, not on a wrong answer.
hypothesis_settings.register_profile("leadflow", deadline=None)
hypothesis_settings.load_profile("leadflow")


# --- Markers ----------------------------------------------------------------------------------

#: Fixtures that resolve the Kafka jars (Maven Central on a cold cache) or start a broker.
#: A test using one, directly or through another fixture, is an integration test whatever
#: its module says, so `-m "not integration"` never needs the network.
BROKER_FIXTURES = frozenset({"kafka_jars", "kafka_bootstrap"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# --- Kafka ------------------------------------------------------------------------------------


def shared_jars_dir() -> Path:
    """The jar cache tests share: $LEADFLOW_KAFKA_JARS, else the repo's own .leadflow cache."""
    default = REPO / ".leadflow" / "kafka" / f"lib-{KAFKA_VERSION}"
    return Path(os.environ.get(JARS_ENV) or default)


@pytest.fixture(scope="session")
def kafka_jars() -> Path:
    """The shared folder of Kafka runtime jars (resolved once, reused by every run)."""
    return resolve_jars(shared_jars_dir(), KAFKA_VERSION)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real broker for the session."""
    external = os.environ.get("LEADFLOW_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    # Resolved here rather than through the kafka_jars fixture, so that a session given an
    # external broker never needs Maven.
    jars = resolve_jars(shared_jars_dir(), KAFKA_VERSION)
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), jars, KAFKA_VERSION, heap_mb=512)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


NewTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[NewTopic]:
    """A factory of uniquely named, freshly created topics; they are deleted after the test.

    ``name = await new_topic("orders", partitions=3, configs={"cleanup.policy": "compact"})``
    """
    made: list[str] = []

    async def make(
        prefix: str = "test", partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        await ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, 1, dict(configs or {}))])
        made.append(name)
        return name

    yield make
    if made:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        with contextlib.suppress(Exception):  # tidying up must not fail a passed test
            await admin.start()
            await admin.delete_topics(made)
        with contextlib.suppress(Exception):
            await admin.close()


# --- Workers ----------------------------------------------------------------------------------


@pytest.fixture
async def isolated(kafka_bootstrap: str, tmp_path: Path) -> Isolated:
    """Unique topics (created) and app id for one test."""
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
