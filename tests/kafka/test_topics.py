"""Topic specs (pure) and ensure_topics against the real broker: idempotent, configs applied."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.kafka.topics import (
    DEADLETTER_RETENTION_MS,
    EVENT_RETENTION_MS,
    TopicSpec,
    ensure_topics,
    topic_specs,
)
from pipeline.settings import Settings, Topics


def _isolated_settings(partitions: int = 3) -> Settings:
    """Settings whose topic names and app id are unique to one test."""
    tag = uuid.uuid4().hex[:8]
    names = {f: f"t{tag}.{v}" for f, v in Topics().model_dump().items()}
    return Settings(app_id=f"lf-{tag}", partitions=partitions, topics=Topics(**names))


Described = tuple[dict[str, int], dict[str, dict[str, Any]]]


async def _describe(bootstrap: str, names: list[str]) -> Described:
    """Partition counts and configs of topics, read back from the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        meta = await admin.describe_topics(names)
        parts = {m["topic"]: len(m["partitions"]) for m in meta if m["error_code"] == 0}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, Any]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            assert resource["error_code"] == 0, resource
            configs[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]
            }
    return parts, configs


# --- pure ------------------------------------------------------------------------------------


def test_topic_specs_cover_every_topic() -> None:
    s = Settings(app_id="lf", partitions=6, replication_factor=1)
    specs = topic_specs(s, teams=["sales", "emea"])
    assert [t.name for t in specs] == [
        "events.web", "events.email", "events.product", "events.crm",
        "leads.stage-changes", "leads.assignments", "routing.sales", "routing.emea",
        "routing.nurture", "routing.recycle", "routing.review", "routing.escalations",
        "leads.attribution", "leads.nurture", "leads.score-changes", "events.deadletter",
        "lf-identity", "lf-leads", "lf-assign",
        "lf-leads-changelog", "lf-identity-changelog", "lf-owners-changelog",
        "leadflow.rules",
    ]
    by_name = {t.name: t for t in specs}
    assert {(t.partitions, t.replication_factor) for t in specs[:-1]} == {(6, 1)}
    # one partition: workers read published revisions in the order they came
    assert (by_name["leadflow.rules"].partitions, by_name["leadflow.rules"].configs) == (
        1, {"cleanup.policy": "compact"})
    assert by_name["events.deadletter"].configs["retention.ms"] == str(DEADLETTER_RETENTION_MS)
    assert by_name["events.web"].configs["retention.ms"] == str(EVENT_RETENTION_MS)
    assert DEADLETTER_RETENTION_MS > EVENT_RETENTION_MS
    assert by_name["lf-leads-changelog"].configs == {"cleanup.policy": "compact"}
    assert by_name["events.web"].configs["cleanup.policy"] == "delete"


def test_replicated_topics_need_two_in_sync_copies() -> None:
    one = topic_specs(Settings(app_id="a", replication_factor=1), teams=["x"])
    three = topic_specs(Settings(app_id="a", replication_factor=3), teams=["x"])
    assert all("min.insync.replicas" not in t.configs for t in one)
    assert {t.configs["min.insync.replicas"] for t in three} == {"2"}
    assert {t.replication_factor for t in three} == {3}


def test_topic_specs_no_duplicates_and_custom_tables() -> None:
    specs = topic_specs(Settings(app_id="a"), teams=["nurture", "x", "x"], tables=["t1"])
    names = [t.name for t in specs]
    assert len(names) == len(set(names))
    assert names.count("routing.nurture") == 1
    assert "routing.x" in names
    assert [n for n in names if n.endswith("-changelog")] == ["a-t1-changelog"]


def test_topic_spec_is_frozen() -> None:
    spec = TopicSpec("a", 1, 1, {"cleanup.policy": "compact"})
    with pytest.raises(AttributeError):
        spec.name = "b"  # type: ignore[misc]
    assert hash(spec) == hash(TopicSpec("a", 1, 1, {}))


# --- real broker -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_ensure_topics_twice(kafka_bootstrap: str) -> None:
    settings = _isolated_settings(partitions=3)
    specs = topic_specs(settings, teams=["sales", "emea"])
    names = [s.name for s in specs]

    first = await ensure_topics(kafka_bootstrap, specs)
    assert first.created == names
    assert first.existing == []
    assert first.warnings == []

    second = await ensure_topics(kafka_bootstrap, specs)
    assert second.created == []
    assert second.existing == names
    assert second.warnings == []
    assert str(second) == f"0 created, {len(names)} already there"

    parts, configs = await _describe(kafka_bootstrap, names)
    assert parts == {n: 1 if n == settings.topics.rules else 3 for n in names}
    assert configs[settings.topics.rules]["cleanup.policy"] == "compact"
    changelog = f"{settings.app_id}-leads-changelog"
    assert configs[changelog]["cleanup.policy"] == "compact"
    assert configs[settings.topics.web]["cleanup.policy"] == "delete"
    assert configs[settings.topics.deadletter]["retention.ms"] == str(DEADLETTER_RETENTION_MS)
    assert configs[settings.topics.routing("sales")]["retention.ms"] == str(EVENT_RETENTION_MS)


@pytest.mark.integration
async def test_existing_topic_with_other_partition_count_is_a_warning(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    name = await new_topic("mismatch", partitions=1)
    report = await ensure_topics(kafka_bootstrap, [TopicSpec(name, 2, 1)])
    assert report.created == []
    assert report.existing == [name]
    assert report.warnings == [
        f"topic {name} has 1 partitions, settings say 2 (left as it is)"
    ]
    parts, _ = await _describe(kafka_bootstrap, [name])
    assert parts == {name: 1}


@pytest.mark.integration
async def test_existing_topic_with_other_replication_factor_is_a_warning(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    # Settings for a cluster (replication 3) meeting a topic made on one broker.
    name = await new_topic("rf", partitions=2)
    report = await ensure_topics(kafka_bootstrap, [TopicSpec(name, 2, 3)])
    assert report.created == []
    assert report.existing == [name]
    assert report.warnings == [
        f"topic {name} has replication factor 1, settings say 3 (left as it is)"
    ]


@pytest.mark.integration
def test_cli_topics_create(kafka_bootstrap: str) -> None:
    settings = _isolated_settings(partitions=2)
    env: dict[str, str | None] = {
        "LEADFLOW_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LEADFLOW_APP_ID": settings.app_id,
        "LEADFLOW_PARTITIONS": "2",
        **{f"LEADFLOW_TOPIC_{k.upper()}": v for k, v in settings.topics.model_dump().items()},
    }
    runner = CliRunner()
    out = runner.invoke(app, ["topics", "create", "--teams", "a,b"], env=env)
    assert out.exit_code == 0, out.output
    expected = [s.name for s in topic_specs(settings, teams=["a", "b"])]
    assert [line.split()[1] for line in out.output.splitlines()[:-1]] == expected
    assert all(line.startswith("created") for line in out.output.splitlines()[:-1])
    assert out.output.splitlines()[-1] == (
        f"topics at {kafka_bootstrap}: {len(expected)} created, 0 already there"
    )
    again = runner.invoke(app, ["topics", "create", "--teams", "a,b"], env=env)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1].endswith(f": 0 created, {len(expected)} already there")
    parts, _ = asyncio.run(_describe(kafka_bootstrap, expected))
    assert parts == {n: 1 if n == settings.topics.rules else 2 for n in expected}
