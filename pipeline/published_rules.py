"""Rules on the rules topic: what `leadflow rules publish` writes and every worker follows.

A record is a `PublishedRules` message (the YAML text and its revision), keyed by the
revision. Readers compile the text themselves with the same checks as `leadflow rules
check`, so a record that did not come through `publish` (produced by hand, or by an older
leadflow) is judged like a file on disk. The latest published rules are the valid record
with the highest revision, the last one on the topic among equals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from pipeline.core.rules import CompiledRules, parse_rules
from pipeline.errors import BrokerError, RulesError, RulesRefused
from pipeline.kafka.security import KafkaSecurity
from pipeline.models.outputs import PublishedRules


@dataclass(frozen=True, slots=True)
class Published:
    """One valid record of the rules topic, compiled."""

    offset: int
    message: PublishedRules
    rules: CompiledRules

    @property
    def revision(self) -> int:
        return self.rules.model.revision


@dataclass(frozen=True, slots=True)
class Broken:
    """A record of the rules topic that cannot be used, with every reason."""

    offset: int
    problems: tuple[str, ...]


def where(topic: str, offset: int) -> str:
    """How errors name a record of the rules topic."""
    return f"{topic}[0]@{offset}"


def decode(topic: str, offset: int, value: bytes | None) -> Published | Broken:
    """A record of the rules topic, validated and compiled, or why it cannot be used."""
    at = where(topic, offset)
    if value is None:
        return Broken(offset, (f"{at}: empty record (no value)",))
    try:
        msg = PublishedRules.model_validate(orjson.loads(value))
    except orjson.JSONDecodeError as exc:
        return Broken(offset, (f"{at}: not JSON: {exc}",))
    except ValidationError as exc:
        return Broken(offset, tuple(
            f"{at}: {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
            for e in exc.errors()))
    try:
        rules = parse_rules(msg.source, f"{at} ({msg.file})")
    except RulesError as exc:
        return Broken(offset, exc.problems)
    return Published(offset, msg, rules)


def latest(records: list[Published | Broken]) -> Published | None:
    """The published rules workers run: the highest revision, the latest of equals."""
    best: Published | None = None
    for r in records:
        if isinstance(r, Published) and (best is None or r.revision >= best.revision):
            best = r
    return best


def check_publish(new: CompiledRules, current: Published | None) -> bool:
    """Whether `new` needs publishing over `current` (False: it is what runs already).

    RulesRefused when its revision is below the current one, or equal with other rules:
    workers would never switch to it, and a revision must name one set of rules.
    """
    if current is None:
        return True
    have, rev = current.rules, new.model.revision
    if new.version == have.version:
        return False
    if rev < current.revision:
        raise RulesRefused(
            f"revision {rev} (rules version {new.version}) goes backwards: the published "
            f"rules are revision {current.revision} (rules version {have.version}); "
            f"set `revision:` above {current.revision}")
    if rev == current.revision:
        raise RulesRefused(
            f"revision {rev} is already published with other rules (rules version "
            f"{have.version}, this file {new.version}); set `revision:` to "
            f"{current.revision + 1} or more")
    return True


def message(rules: CompiledRules, text: str, file: str,
            now: datetime | None = None) -> PublishedRules:
    """The record `publish` writes for validated rules and their text."""
    return PublishedRules(rules_version=rules.version, revision=rules.model.revision,
                          source=text, file=file, published_at=now or datetime.now(UTC))


async def read_topic(bootstrap: str, topic: str, *, security: KafkaSecurity | None = None,
                     timeout_s: float = 30.0) -> list[Published | Broken]:
    """Every record of the rules topic, decoded, up to its end when reading started."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", **(security.client_kwargs() if security else {}))
    out: list[Published | Broken] = []
    try:
        await consumer.start()
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} at {bootstrap} took over {timeout_s:g} s")
            for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                out.append(decode(topic, rec.offset, rec.value))
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic} at {bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()
    return out


async def produce(bootstrap: str, topic: str, msg: PublishedRules, *,
                  security: KafkaSecurity | None = None) -> int:
    """Write one record (acks from all in-sync replicas); its offset."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                **(security.client_kwargs() if security else {}))
    try:
        await producer.start()
        meta = await producer.send_and_wait(topic, msg.to_bytes(),
                                            key=str(msg.revision).encode(), partition=0)
    except KafkaError as exc:
        raise BrokerError(f"cannot publish to {topic} at {bootstrap}: {exc}") from exc
    finally:
        await producer.stop()
    return int(meta.offset)
