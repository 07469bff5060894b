"""Records the stages share: consumed messages, rejections, where outputs go, the result
shape the shell consumes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from pipeline.core.state import LeadState, without_seen
from pipeline.settings import Topics
from pipeline.stream.codec import dumps, pack
from pipeline.stream.keys import partition_for
from pipeline.stream.produce import Send

if TYPE_CHECKING:  # the stages count through it; importing it pulls in the web server
    from pipeline.metrics.registry import Metrics


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
    every output names; `score_ledger`: whether score changes are built and sent."""

    topics: Topics
    identity: str
    leads: str
    assign: str
    partitions: int
    rules_version: str | None
    score_ledger: bool = True

    @classmethod
    def of(cls, topics: Topics, app_id: str, partitions: int,
           rules_version: str | None, *, score_ledger: bool = True) -> Destinations:
        """The internal topics of app `app_id` (`<app>-identity`, `-leads`, `-assign`)."""
        return cls(topics, f"{app_id}-identity", f"{app_id}-leads", f"{app_id}-assign",
                   partitions, rules_version, score_ledger)


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


@dataclass(frozen=True, slots=True)
class Route:
    """The team and last alert of a lead, so that its acknowledgements find the team."""

    team: str | None
    alert_id: str | None

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> Route | None:
        """The route of a stored lead record, without decoding its state."""
        route = stored.get("route") if stored is not None else None
        return cls(route.get("team"), route.get("alert_id")) if route else None


@dataclass(frozen=True, slots=True)
class LeadRecord:
    """A lead as the leads table keeps it: the core state, the dedup window beside it (so
    both go in one changelog record) and its route. Immutable: the worker keeps decoded
    records between batches (`stream.cache`) and hands the same one to later batches.

    Stored as `{"s": state, "seen": window, "route": {...}}` (`to_stored`). The window is
    `stream.dedup`'s (messageId digests by event time); the state's own short dedup list
    is stored empty, as the window has dropped every repeat before the core sees it.
    """

    state: LeadState
    seen: Mapping[str, Any] | None
    route: Route | None = None

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> LeadRecord:
        return cls(LeadState.from_dict(stored["s"]), stored.get("seen"),
                   Route.from_stored(stored))

    @classmethod
    def decode(cls, raw: bytes) -> LeadRecord:
        """A leads-table value (`encode`d) -> its record."""
        return cls.from_stored(orjson.loads(raw))

    def as_stored(self) -> LeadRecord:
        """The record as the table gives it back (`decode(encode())`): the state's own
        dedup list is not stored. What the record cache keeps of a write."""
        state = without_seen(self.state)
        return self if state is self.state else LeadRecord(state, self.seen, self.route)

    def encode(self) -> bytes:
        """The leads-table value of this record (the JSON of `to_stored`)."""
        return dumps(self.to_stored())

    def to_stored(self) -> dict[str, Any]:
        state = self.state.to_dict()
        state["seen"] = {}
        out: dict[str, Any] = {"s": state}
        if self.seen is not None:
            out["seen"] = self.seen
        if self.route is not None:
            out["route"] = {"team": self.route.team, "alert_id": self.route.alert_id}
        return out

    def traits(self) -> Mapping[str, Any]:
        """The latest traits (from identify calls), for routing: values without their times."""
        return {k: v[0] for k, v in self.state.traits.items()}
