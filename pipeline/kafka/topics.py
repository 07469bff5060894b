"""Every topic leadflow uses, and creating the missing ones (safe to run again and again)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import BrokerError
from pipeline.kafka.security import KafkaSecurity, connect_error
from pipeline.settings import Settings

DAY_MS = 24 * 3600 * 1000
#: Inputs and outputs: a week, long enough to replay after an incident.
EVENT_RETENTION_MS = 7 * DAY_MS
#: The dead-letter topic is read by people, days later: keep it a month.
DEADLETTER_RETENTION_MS = 30 * DAY_MS
#: Faust's tables (its changelog topics are named ``{app_id}-{table}-changelog``).
DEFAULT_TABLES: tuple[str, ...] = ("leads", "identity", "owners")
# Re-keyed topics between the worker's agents (see pipeline.stream.app).
DEFAULT_INTERNAL: tuple[str, ...] = ("identity", "leads", "assign")

_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    """One topic as leadflow wants it."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass
class EnsureReport:
    """What ``ensure_topics`` did: created and existing names, and warnings for people."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{len(self.created)} created, {len(self.existing)} already there"
        if self.warnings:
            text += f", {len(self.warnings)} warning(s)"
        return text


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's changelog topic name of a table."""
    return f"{app_id}-{table}-changelog"


def topic_specs(
    settings: Settings,
    teams: Sequence[str],
    tables: Sequence[str] = DEFAULT_TABLES,
    internal: Sequence[str] = DEFAULT_INTERNAL,
) -> list[TopicSpec]:
    """All topics for ``settings``: inputs, outputs, dead letter, team routing, changelogs,
    and the worker's internal re-keyed topics (created up front: a consumer that starts
    before its topic exists ignores it until the next rebalance)."""
    t = settings.topics
    parts, rf = settings.partitions, settings.replication_factor
    events = {"cleanup.policy": "delete", "retention.ms": str(EVENT_RETENTION_MS)}
    names: list[tuple[str, Mapping[str, str]]] = [
        *((name, events) for name in t.inputs()),
        (t.stage_changes, events),
        (t.assignments, events),
        *((t.routing(team), events) for team in teams),
        (t.nurture, events),
        (t.recycle, events),
        (t.review, events),
        (t.escalations, events),
        (t.attribution, events),
        (t.nurture_changes, events),
        (t.score_changes, events),
        (t.deadletter, {"cleanup.policy": "delete", "retention.ms": str(DEADLETTER_RETENTION_MS)}),
        *((f"{settings.app_id}-{name}", events) for name in internal),
        # Table changelogs hold state: only the latest value per key matters, forever.
        *((changelog_topic(settings.app_id, table), {"cleanup.policy": "compact"})
          for table in tables),
    ]
    specs: list[TopicSpec] = []
    seen: set[str] = {t.rules}
    for name, configs in names:
        if name in seen:  # e.g. a team called "nurture" is the nurture topic
            continue
        seen.add(name)
        cfg = dict(configs)
        if rf >= 3:
            # acks=all must mean two copies, not the leader alone (Kafka's default is 1):
            # one broker may fail without losing an acknowledged record or stopping writes.
            cfg["min.insync.replicas"] = "2"
        specs.append(TopicSpec(name, parts, rf, cfg))
    # Published rules: the latest record per revision, forever; one partition, so every
    # worker reads the revisions in the order they were published.
    rules_cfg = {"cleanup.policy": "compact"}
    if rf >= 3:
        rules_cfg["min.insync.replicas"] = "2"
    specs.append(TopicSpec(t.rules, 1, rf, rules_cfg))
    return specs


async def _partition_counts(
    admin: Any, names: Sequence[str], wait_s: float, *, must_exist: bool = False
) -> dict[str, int]:
    """Partition counts of the topics among ``names`` that exist, once their leaders are known.

    Right after a topic is created the broker's metadata can still say UNKNOWN_TOPIC (seen for
    ~0.4 s on 3.9.1 right after a CreateTopics that succeeded), LEADER_NOT_AVAILABLE, or list
    partitions without a leader. Wait up to ``wait_s`` for such topics to settle; with
    ``must_exist`` (topics we just created) an unknown topic is still settling too.
    """
    return {name: parts for name, (parts, _) in
            (await _layouts(admin, names, wait_s, must_exist=must_exist)).items()}


async def _layouts(
    admin: Any, names: Sequence[str], wait_s: float, *, must_exist: bool = False
) -> dict[str, tuple[int, int]]:
    """(partitions, replication factor) of the topics among ``names`` that exist (see
    ``_partition_counts`` for the wait); the replication factor is the smallest replica
    count over the topic's partitions."""
    deadline = time.monotonic() + wait_s
    while True:
        layouts: dict[str, tuple[int, int]] = {}
        settling = False
        for meta in await admin.describe_topics(list(names)):
            code = meta["error_code"]
            if code == _UNKNOWN_TOPIC:
                settling = settling or must_exist
                continue
            parts = meta["partitions"]
            layouts[meta["topic"]] = (
                len(parts), min((len(p["replicas"]) for p in parts), default=0))
            if code != 0 or any(p["leader"] < 0 for p in parts):
                settling = True
        if not settling or time.monotonic() >= deadline:
            return layouts
        await asyncio.sleep(0.2)


async def ensure_topics(
    bootstrap: str, specs: Sequence[TopicSpec], timeout_s: float = 30.0,
    *, security: KafkaSecurity | None = None,
) -> EnsureReport:
    """Create the topics of ``specs`` that are missing; existing ones are left as they are.

    Returns once the created topics have partition leaders, so producers can use them at once.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, KafkaError

    report = EnsureReport()
    names = [s.name for s in specs]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
        **(security.client_kwargs() if security else {}),
    )
    try:
        try:
            await admin.start()
            layouts = await _layouts(admin, names, wait_s=timeout_s)
            existing = {name: parts for name, (parts, _) in layouts.items()}
        except KafkaConnectionError as exc:  # TLS or SASL failures end up here too: say which
            raise await connect_error(bootstrap, security, exc) from exc
        except KafkaError as exc:
            raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        missing = [s for s in specs if s.name not in existing]
        raced: list[str] = []
        if missing:
            new = [
                NewTopic(s.name, s.partitions, s.replication_factor,
                         topic_configs=dict(s.configs))
                for s in missing
            ]
            try:
                response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except KafkaError as exc:
                raise BrokerError(f"creating topics at {bootstrap} failed: {exc}") from exc
            errors: list[str] = []
            for result in response.topic_errors:
                name, code = result[0], result[1]
                message = result[2] if len(result) > 2 else None
                if code == 0:
                    report.created.append(name)
                elif code == _TOPIC_ALREADY_EXISTS:  # another process made it just now
                    raced.append(name)
                else:
                    errors.append(f"{name}: error {code} {message or ''}".strip())
            if errors:
                raise BrokerError("could not create topics: " + "; ".join(errors))
            try:
                existing.update(await _partition_counts(
                    admin, report.created + raced, wait_s=timeout_s, must_exist=True))
            except KafkaError as exc:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        created = set(report.created)
        for spec in specs:
            if spec.name in created:
                if spec.name not in existing:
                    report.warnings.append(
                        f"topic {spec.name} was created but is not visible after {timeout_s:g} s"
                    )
                continue
            report.existing.append(spec.name)
            have = existing.get(spec.name)
            if have is not None and have != spec.partitions:
                report.warnings.append(
                    f"topic {spec.name} has {have} partitions, "
                    f"settings say {spec.partitions} (left as it is)"
                )
            # E.g. a topic made on a one-broker setup (replication 1), now on a cluster: losing
            # one broker loses its data. Changing it takes a partition reassignment: say so.
            rf = layouts[spec.name][1] if spec.name in layouts else None
            if rf is not None and rf != spec.replication_factor:
                report.warnings.append(
                    f"topic {spec.name} has replication factor {rf}, "
                    f"settings say {spec.replication_factor} (left as it is)"
                )
        # Keep the order of `specs` in both lists.
        report.created = [n for n in names if n in created]
    finally:
        with contextlib.suppress(Exception):  # closing must not hide the real error
            await admin.close()
    return report
