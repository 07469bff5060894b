"""Identity stitching, pure: anonymousId -> userId, crediting a visitor's earlier events.

A visitor's events wait in a per-anonymousId buffer until an identify or alias call names
the user; then they are forwarded to that lead (with their own timestamps, so the core
scores them by their own time) and the buffer is cleared in the same state write. The
lead's own messageId dedup makes a replayed flush count once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.core.event import Event


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """What we know about one anonymousId (or a previousId named in an alias call)."""

    user_id: str | None = None
    buffer: tuple[Event, ...] = ()
    overflowed: int = 0  # events pushed out of a full buffer (counted, reported in metrics)


@dataclass(frozen=True, slots=True)
class Stitched:
    """The result of one step: the new record and the events to score, keyed by lead."""

    record: IdentityRecord
    forward: tuple[Event, ...]
    overflowed: int = 0


def identity_key(event: Event) -> str:
    """The key an event is stitched under: previousId for alias, else anonymousId or userId."""
    if event.type == "alias" and event.name:
        return event.name
    return event.anonymous_id or event.user_id or event.lead_id


def _to_lead(event: Event, user_id: str) -> Event:
    if event.lead_id == user_id:
        return event
    return replace(event, lead_id=user_id)


def stitch(record: IdentityRecord | None, event: Event, *, max_buffer: int = 200) -> Stitched:
    """Apply one event to an identity record; return what to forward to the lead stream."""
    rec = record or IdentityRecord()
    if event.user_id:
        user = event.user_id
        if rec.user_id != user or rec.buffer:
            flushed = tuple(_to_lead(e, user) for e in rec.buffer)
            new = IdentityRecord(user_id=user, buffer=(), overflowed=rec.overflowed)
            return Stitched(new, (*flushed, _to_lead(event, user)))
        return Stitched(rec, (_to_lead(event, user),))
    if rec.user_id is not None:
        return Stitched(rec, (_to_lead(event, rec.user_id),))
    if any(e.message_id == event.message_id for e in rec.buffer):
        return Stitched(rec, ())  # a redelivered anonymous event: already waiting
    buffer = (*rec.buffer, event)
    dropped = 0
    if len(buffer) > max_buffer:
        dropped = len(buffer) - max_buffer
        buffer = buffer[dropped:]
    return Stitched(
        IdentityRecord(user_id=None, buffer=buffer, overflowed=rec.overflowed + dropped),
        (),
        dropped,
    )


def stitch_many(
    record: IdentityRecord | None, events: list[Event], *, max_buffer: int = 200
) -> Stitched:
    """Fold `stitch` over one key's events in arrival order."""
    forward: list[Event] = []
    dropped = 0
    rec = record
    for ev in events:
        out = stitch(rec, ev, max_buffer=max_buffer)
        rec = out.record
        forward.extend(out.forward)
        dropped += out.overflowed
    return Stitched(rec or IdentityRecord(), tuple(forward), dropped)


def record_to_dict(rec: IdentityRecord, encode: Any) -> dict[str, Any]:
    """JSON-friendly form; `encode` turns an Event into a dict (see stream.codec)."""
    return {"u": rec.user_id, "b": [encode(e) for e in rec.buffer], "o": rec.overflowed}


def record_from_dict(data: dict[str, Any], decode: Any) -> IdentityRecord:
    """Inverse of record_to_dict."""
    return IdentityRecord(
        user_id=data.get("u"),
        buffer=tuple(decode(e) for e in data.get("b", ())),
        overflowed=int(data.get("o", 0)),
    )
