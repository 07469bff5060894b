"""Read the dead-letter topic back: counts, one letter, and replays onto the source topics.

A replay produces each selected dead letter's original key and bytes, with its original
record timestamp (so time checks and scoring see the event as it first came), on its source
topic, with a `leadflow-replay: <replay id>` header. Replayed events are deduplicated by
messageId like any other, so a second replay changes no score. A message that fails again is
dead-lettered with that replay id, and later replays skip such letters unless forced: a
message that cannot be fixed by a setting or rule change does not go round in circles.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.deadletters import REPLAY_HEADER, REPLAY_OF_HEADER
from pipeline.errors import LeadflowError
from pipeline.kafka.security import KafkaSecurity
from pipeline.models.outputs import DeadLetter
from pipeline.models.timefmt import iso_z


class DeadLetterError(LeadflowError):
    """The dead-letter topic cannot be read as asked, or a replay could not be produced."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A dead letter and where it sits on the dead-letter topic."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"

    def identity(self) -> tuple[str, str | None, str]:
        """Which message this letter would produce: the stream may dead-letter one record
        twice after a redelivery, and a replay produces each message once."""
        dl = self.letter
        return (dl.source_topic, dl.key_b64, dl.value_b64)


async def _partitions(bootstrap: str, topic: str, security: KafkaSecurity | None) -> set[int]:
    """The topic's partitions, asked of the cluster (a consumer's own metadata only covers
    topics it already tracks)."""
    from pipeline.alerts import topic_partitions

    tps, missing = await topic_partitions(bootstrap, [topic], security=security)
    if missing or not tps:
        raise DeadLetterError(f"topic {topic} does not exist (LEADFLOW_TOPIC_DEADLETTER; "
                              "create it with `leadflow topics create`)")
    return {tp.partition for tp in tps}


async def read_all(bootstrap: str, topic: str, *, security: KafkaSecurity | None = None,
                   timeout_s: float = 60.0) -> list[Stored]:
    """Every dead letter on `topic` up to its end when called, in (partition, offset) order.

    Records that are not dead letters (a hand-written test record) are skipped.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        **(security.client_kwargs() if security else {}))
    await consumer.start()
    try:
        parts = await _partitions(bootstrap, topic, security)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Stored] = []
        deadline = time.monotonic() + timeout_s
        starts = await consumer.beginning_offsets(tps)
        # next offset to read per partition; done when each has reached its end
        todo = {tp: starts[tp] for tp in tps if starts[tp] < ends[tp]}
        while todo:
            if time.monotonic() > deadline:
                raise DeadLetterError(f"reading {topic} took longer than {timeout_s:.0f} s")
            batch = await consumer.getmany(*tps, timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    if r.offset + 1 >= ends[tp]:
                        todo.pop(tp, None)
                    try:
                        letter = DeadLetter.model_validate_json(r.value or b"")
                    except ValueError:
                        continue
                    out.append(Stored(tp.partition, r.offset, letter))
            for tp in list(todo):  # a partition whose end is a transaction marker or a gap
                if await consumer.position(tp) >= ends[tp]:
                    del todo[tp]
        out.sort(key=lambda s: (s.partition, s.offset))
        return out
    finally:
        await consumer.stop()


async def read_one(bootstrap: str, topic: str, partition: int, offset: int, *,
                   security: KafkaSecurity | None = None) -> Stored:
    """The dead letter at `partition`:`offset`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        **(security.client_kwargs() if security else {}))
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        if partition not in await _partitions(bootstrap, topic, security):
            raise DeadLetterError(f"{topic} has no partition {partition}")
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not start <= offset < end:
            raise DeadLetterError(f"{topic} partition {partition} holds offsets {start} to "
                                  f"{end - 1}; {offset} is not there (expired or not yet "
                                  "written); `leadflow deadletters list` shows what is")
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for r in (await consumer.getmany(tp, timeout_ms=500, max_records=1)).get(tp, []):
                try:
                    return Stored(partition, r.offset, DeadLetter.model_validate_json(r.value
                                                                                      or b""))
                except ValueError:
                    raise DeadLetterError(f"{topic} {partition}:{offset} is not a dead "
                                          "letter") from None
        raise DeadLetterError(f"could not read {topic} {partition}:{offset} within 30 s")
    finally:
        await consumer.stop()


@dataclass
class Group:
    """Dead letters of one reason and source topic."""

    reason: str
    source_topic: str
    count: int = 0
    replayed_failed: int = 0  # letters a replay produced that failed again, and theirs
    newest: datetime | None = None
    oldest: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "source_topic": self.source_topic,
                "count": self.count, "failed_after_replay": self.replayed_failed,
                "newest": iso_z(self.newest) if self.newest else None,
                "oldest": iso_z(self.oldest) if self.oldest else None}


def summarize(letters: Iterable[Stored]) -> list[Group]:
    """Counts by reason and source topic, the group with the newest letter first."""
    letters = list(letters)
    retried = {s.letter.replay_of for s in letters if s.letter.replay_of}
    groups: dict[tuple[str, str], Group] = {}
    for s in letters:
        dl = s.letter
        g = groups.setdefault((dl.reason, dl.source_topic), Group(dl.reason, dl.source_topic))
        g.count += 1
        g.replayed_failed += dl.replay_id is not None or s.where in retried
        g.newest = max(g.newest, dl.received_at) if g.newest else dl.received_at
        g.oldest = min(g.oldest, dl.received_at) if g.oldest else dl.received_at
    return sorted(groups.values(), key=lambda g: (g.newest or datetime.min.replace(tzinfo=UTC),
                                                  g.count), reverse=True)


def parse_offsets(text: str) -> set[tuple[int, int]]:
    """`P:O`, `P:A-B` (both ends included), comma separated: dead-letter topic positions."""
    out: set[tuple[int, int]] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+):(\d+)(?:-(\d+))?", part)
        if not m:
            raise DeadLetterError(f"--offsets: {part!r} is not PARTITION:OFFSET or "
                                  "PARTITION:FIRST-LAST (as `leadflow deadletters list` shows)")
        p, a = int(m.group(1)), int(m.group(2))
        b = int(m.group(3)) if m.group(3) else a
        if b < a:
            raise DeadLetterError(f"--offsets: {part!r} ends before it starts")
        out.update((p, o) for o in range(a, b + 1))
    return out


@dataclass
class Selection:
    """What a replay will produce, and what it leaves out and why."""

    chosen: list[Stored] = field(default_factory=list)
    failed_after_replay: list[Stored] = field(default_factory=list)
    duplicates: int = 0


def select(
    letters: Sequence[Stored], *, reasons: Sequence[str] = (),
    source_topics: Sequence[str] = (), since: datetime | None = None,
    until: datetime | None = None, offsets: set[tuple[int, int]] | None = None,
    force: bool = False,
) -> Selection:
    """The letters matching every filter given, each original message once (newest letter)."""
    sel = Selection()
    seen: set[tuple[Any, ...]] = set()
    # letters a replay already produced and that failed again (their new letters say so)
    retried = {s.letter.replay_of for s in letters if s.letter.replay_of}
    for s in sorted(letters, key=lambda s: s.letter.received_at, reverse=True):
        dl = s.letter
        if reasons and dl.reason not in reasons:
            continue
        if source_topics and dl.source_topic not in source_topics:
            continue
        if since is not None and dl.received_at < since:
            continue
        if until is not None and dl.received_at >= until:
            continue
        if offsets is not None and (s.partition, s.offset) not in offsets:
            continue
        if (dl.replay_id is not None or s.where in retried) and not force:
            sel.failed_after_replay.append(s)
            continue
        if s.identity() in seen:
            sel.duplicates += 1
            continue
        seen.add(s.identity())
        sel.chosen.append(s)
    sel.chosen.sort(key=lambda s: (s.letter.source_topic, s.letter.timestamp_ms or 0,
                                   s.partition, s.offset))
    return sel


def new_replay_id(now: datetime) -> str:
    """A replay id that sorts by time and says when it ran."""
    return f"r-{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


async def replay(
    bootstrap: str, letters: Sequence[Stored], replay_id: str, *,
    security: KafkaSecurity | None = None, progress: Callable[[int, int], None] | None = None,
    chunk: int = 500,
) -> dict[str, int]:
    """Produce each letter's original key and bytes on its source topic, once (idempotent
    producer, acks from all replicas); returns how many went to each topic."""
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
        client_id="leadflow-replay", max_request_size=2 * 1024 * 1024,
        **(security.client_kwargs() if security else {}))
    counts: dict[str, int] = {}
    await producer.start()
    try:
        done = 0
        for i in range(0, len(letters), chunk):
            futures = []
            for s in letters[i:i + chunk]:
                dl = s.letter
                futures.append(await producer.send(
                    dl.source_topic, base64.b64decode(dl.value_b64),
                    key=base64.b64decode(dl.key_b64) if dl.key_b64 is not None else None,
                    timestamp_ms=dl.timestamp_ms,
                    headers=[(REPLAY_HEADER, replay_id.encode()),
                             (REPLAY_OF_HEADER, s.where.encode())]))
                counts[dl.source_topic] = counts.get(dl.source_topic, 0) + 1
            for f in futures:
                await f
            done += len(futures)
            if progress is not None:
                progress(done, len(letters))
    except KafkaError as exc:
        raise DeadLetterError(f"replay {replay_id} stopped after {done} of {len(letters)} "
                              f"messages: {type(exc).__name__}: {exc}; run it again (replayed "
                              "events are deduplicated by messageId)") from exc
    finally:
        await producer.stop()
    return counts


def letter_dict(s: Stored) -> dict[str, Any]:
    """A dead letter for people and programs: its fields, where it is, the decoded value."""
    d = s.letter.to_dict()
    d["deadletter_position"] = s.where
    raw = base64.b64decode(s.letter.value_b64)
    try:
        d["value"] = orjson.loads(raw)
    except orjson.JSONDecodeError:
        d["value"] = raw.decode("utf-8", "replace")
    if s.letter.key_b64 is not None:
        d["key"] = base64.b64decode(s.letter.key_b64).decode("utf-8", "replace")
    return d
