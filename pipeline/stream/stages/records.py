"""Records the stages share: consumed messages, rejections, where outputs go, the result
shape the shell consumes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from pipeline.core.routing import TeamState
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


@dataclass(frozen=True, slots=True)
class PendingAlert:
    """An alert whose SLA clock runs (or, `waiting`, that waits for its team to open).

    `alert` is the assign command's alert body; `excluded` the reps it was taken from on
    lapsed SLAs; `supersedes` the alerts it replaced (an acknowledgement of one closes it);
    a waiting alert says why (`reason`) and since when (`since`, ISO time)."""

    due_ms: int
    alert: Mapping[str, Any]
    owner: str | None
    excluded: tuple[str, ...] = ()
    supersedes: tuple[str, ...] = ()
    waiting: bool = False
    reason: str | None = None
    since: str | None = None

    @property
    def lead_id(self) -> str:
        return str(self.alert["lead_id"])

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> PendingAlert:
        return cls(int(d["due_ms"]), d["alert"], d.get("owner"), tuple(d.get("excluded", ())),
                   tuple(d.get("supersedes", ())), bool(d.get("waiting", False)),
                   d.get("reason"), d.get("since"))

    def to_stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"due_ms": self.due_ms, "alert": self.alert, "owner": self.owner,
                               "excluded": list(self.excluded),
                               "supersedes": list(self.supersedes)}
        if self.waiting:
            out.update(waiting=True, reason=self.reason, since=self.since)
        return out


@dataclass(frozen=True, slots=True)
class QueuedAlert:
    """An alert no rep could take, in the team's queue (with why) until acknowledged."""

    alert_id: str
    lead_id: str
    kind: str
    since: str
    reason: str

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> QueuedAlert:
        return cls(d["alert_id"], d["lead_id"], d["kind"], d["since"], d["reason"])

    def to_stored(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "lead_id": self.lead_id, "kind": self.kind,
                "since": self.since, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class TeamRecord:
    """A team as the owners table keeps it: its assignment state, the alerts whose SLA
    runs (`pending`, by alert id), the unowned queue (oldest first) and how many alerts
    the queue's cap dropped.

    Stored as `{"state": ..., "pending": {id: ...}, "queue": {id: ...}, "queue_dropped": n}`.
    """

    state: TeamState = field(default_factory=TeamState)
    pending: Mapping[str, PendingAlert] = field(default_factory=dict)
    queue: Mapping[str, QueuedAlert] = field(default_factory=dict)
    queue_dropped: int = 0

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> TeamRecord:
        if stored is None:
            return cls()
        return cls(TeamState.from_dict(stored.get("state") or {}),
                   {k: PendingAlert.from_stored(v)
                    for k, v in (stored.get("pending") or {}).items()},
                   {k: QueuedAlert.from_stored(v) for k, v in (stored.get("queue") or {}).items()},
                   int(stored.get("queue_dropped", 0)))

    def to_stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.to_dict(),
                               "pending": {k: v.to_stored() for k, v in self.pending.items()},
                               "queue": {k: v.to_stored() for k, v in self.queue.items()}}
        if self.queue_dropped:
            out["queue_dropped"] = self.queue_dropped
        return out

    def overdue(self, now_ms: int) -> bool:
        """Whether an alert's SLA (or a waiting alert's opening) has come by `now_ms`."""
        return any(p.due_ms <= now_ms for p in self.pending.values())
