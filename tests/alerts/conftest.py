"""Fixtures of the alerts tests: topics unique to one test (helpers in tests/support/alerts.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.kafka.topics import TopicSpec, ensure_topics
from pipeline.settings import Topics
from tests.support.alerts import OTHER_TEAM, TEAM, AlertTopics


@pytest.fixture
async def alert_topics(kafka_bootstrap: str) -> AsyncIterator[AlertTopics]:
    """Routing (2 teams, 2 partitions each), escalation, CRM and dead-letter topics."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    topics = Topics(
        routing_prefix=f"{tag}.routing.",
        escalations=f"{tag}.routing.escalations",
        nurture=f"{tag}.routing.nurture",
        recycle=f"{tag}.routing.recycle",
        crm=f"{tag}.events.crm",
        deadletter=f"{tag}.events.deadletter",
    )
    names = [
        topics.routing(TEAM), topics.routing(OTHER_TEAM), topics.escalations, topics.crm,
        topics.deadletter,
    ]
    await ensure_topics(kafka_bootstrap, [TopicSpec(n, 2, 1, {}) for n in names])
    yield AlertTopics(kafka_bootstrap, topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    with contextlib.suppress(Exception):  # tidying up must not fail a passed test
        await admin.start()
        await admin.delete_topics(names)
    with contextlib.suppress(Exception):
        await admin.close()
