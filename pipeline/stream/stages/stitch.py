"""Stitch: credit a visitor's events to the lead once an identify or alias names the user;
events keyed by lead go on to the leads topic in envelopes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.event import Event
from pipeline.core.identity import (
    IdentityRecord,
    identity_key,
    record_from_dict,
    record_to_dict,
    stitch_many,
)
from pipeline.stream.codec import encode_event, event_from_dict, event_to_dict
from pipeline.stream.produce import Send
from pipeline.stream.stages.records import Destinations, envelopes

if TYPE_CHECKING:  # the stages count through it; importing it pulls in the web server
    from pipeline.metrics.registry import Metrics


@dataclass(slots=True)
class StitchResult:
    """Events keyed by lead, the identity table writes, and how many visitor events overflowed."""

    forward: list[Event] = field(default_factory=list)
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    overflowed: int = 0


def stitch_batch(
    events: Sequence[Event],
    get: Callable[[str], Mapping[str, Any] | None],
    *,
    max_buffer: int = 200,
) -> StitchResult:
    """Group by identity key, stitch each key's events in order, coalesce one write per key."""
    by_key: dict[str, list[Event]] = {}
    for e in events:
        by_key.setdefault(identity_key(e), []).append(e)
    out = StitchResult()
    for key, evs in by_key.items():
        stored = get(key)
        rec: IdentityRecord | None = (
            record_from_dict(dict(stored), event_from_dict) if stored is not None else None
        )
        res = stitch_many(rec, evs, max_buffer=max_buffer)
        out.forward.extend(res.forward)
        out.overflowed += res.overflowed
        if res.record != rec:
            out.writes[key] = record_to_dict(res.record, event_to_dict)
    return out


@dataclass(frozen=True, slots=True)
class Stitched:
    """A stitch batch's envelopes for the leads topic, identity writes and overflow count."""

    sends: tuple[Send, ...]
    writes: Mapping[str, Any]
    overflowed: int

    def observe(self, metrics: Metrics, now_s: float) -> None:
        if self.overflowed:
            metrics.visitor_overflow(self.overflowed)


def stitch(
    items: Sequence[tuple[Event, bytes]],
    get: Callable[[str], Mapping[str, Any] | None],
    dest: Destinations,
    *,
    max_buffer: int,
) -> Stitched:
    """Stitch decoded events, each given with the line it arrived as: an event forwarded
    unchanged is sent as those bytes, not encoded again."""
    lines = {id(e): line for e, line in items}
    res = stitch_batch([e for e, _ in items], get, max_buffer=max_buffer)
    sends = envelopes(
        dest.leads,
        ((e.lead_id.encode(), lines.get(id(e)) or encode_event(e)) for e in res.forward),
        dest.partitions)
    return Stitched(tuple(sends), res.writes, res.overflowed)
