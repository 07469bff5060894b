"""The batched per-stage work of the stream, on plain mappings: no Faust, no Kafka.

Each agent in `stream.app` takes a batch of messages, hands it to one of these functions
with a read view of its table, and gets back the messages to send and the table writes
to make (one per key per batch). Tests and benchmarks drive the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.event import Event
from pipeline.core.identity import (
    IdentityRecord,
    identity_key,
    record_from_dict,
    record_to_dict,
    stitch_many,
)
from pipeline.errors import InvalidEvent
from pipeline.models.events import parse_message
from pipeline.stream.codec import event_from_dict, event_to_dict


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed Kafka record, as the dead-letter topic needs to describe it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that goes to the dead-letter topic, with why."""

    message: RawMessage
    reason: str
    detail: str


@dataclass(slots=True)
class IngestResult:
    """Valid events (to be stitched) and rejected messages, in input order."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def ingest_batch(
    messages: Sequence[RawMessage],
    sources: Mapping[str, str],
    *,
    max_bytes: int,
    max_future_skew_ms: int,
) -> IngestResult:
    """Validate raw input messages; nothing raises: bad input becomes a Rejected."""
    out = IngestResult()
    for m in messages:
        if m.value is None:
            out.rejected.append(Rejected(m, "empty", "message has no value (tombstone)"))
            continue
        try:
            out.events.append(
                parse_message(
                    m.value,
                    source=sources.get(m.topic, ""),
                    now_ms=m.timestamp_ms,
                    max_bytes=max_bytes,
                    max_future_skew_ms=max_future_skew_ms,
                )
            )
        except InvalidEvent as exc:
            out.rejected.append(Rejected(m, exc.reason, exc.detail))
        except Exception as exc:  # a worker must never stop on input; keep the evidence
            out.rejected.append(Rejected(m, "internal", f"{type(exc).__name__}: {exc}"))
    return out


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
