"""Records the stages share: consumed messages, rejections, where outputs go, the result
shape the shell consumes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.metrics.registry import Metrics
from pipeline.settings import Topics
from pipeline.stream.codec import pack
from pipeline.stream.keys import partition_for
from pipeline.stream.produce import Send


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed Kafka record, as the dead-letter topic needs to describe it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    # Kafka headers: a dead letter names the replay (REPLAY_HEADER) that produced it.
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that goes to the dead-letter topic, with why."""

    message: RawMessage
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Destinations:
    """Where the stages send: the output topics, the internal topics between the stages,
    their partition count (envelopes go to their keys' partition) and the rules version
    every output names."""

    topics: Topics
    identity: str
    leads: str
    assign: str
    partitions: int
    rules_version: str | None

    @classmethod
    def of(cls, topics: Topics, app_id: str, partitions: int,
           rules_version: str | None) -> Destinations:
        """The internal topics of app `app_id` (`<app>-identity`, `-leads`, `-assign`)."""
        return cls(topics, f"{app_id}-identity", f"{app_id}-leads", f"{app_id}-assign",
                   partitions, rules_version)


class StageOutput(Protocol):
    """What the shell's commit sequence takes from a stage: send, write, count."""

    @property
    def sends(self) -> Sequence[Send]: ...

    @property
    def writes(self) -> Mapping[str, Any]: ...

    def observe(self, metrics: Metrics, now_s: float) -> None:
        """Count the batch in the metrics (after its records were acknowledged)."""


def envelopes(topic: str, keyed: Iterable[tuple[bytes, bytes]], partitions: int) -> list[Send]:
    """(key, line) pairs -> one envelope (or a few) per partition of `topic` (`codec.pack`)."""
    by_part: dict[int, list[bytes]] = {}
    for key, line in keyed:
        by_part.setdefault(partition_for(key, partitions), []).append(line)
    return [Send(topic, None, env, p) for p, lines in by_part.items() for env in pack(lines)]
