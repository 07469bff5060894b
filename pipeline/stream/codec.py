"""Compact JSON for core Events on leadflow's internal topics (validated once at ingest)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from pipeline.core.event import EMPTY, Event, make_event


def _default(obj: object) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def event_to_dict(e: Event) -> dict[str, Any]:
    """Short keys: this form is written once per event per internal hop."""
    d: dict[str, Any] = {"m": e.message_id, "l": e.lead_id, "t": e.type, "ts": e.timestamp_ms}
    if e.name:
        d["n"] = e.name
    if e.source:
        d["s"] = e.source
    # Plain dicts: the tables' JSON codec does not know read-only mappings.
    if e.properties:
        d["p"] = dict(e.properties)
    if e.traits:
        d["tr"] = dict(e.traits)
    if e.url:
        d["u"] = e.url
    if e.utm:
        d["utm"] = dict(e.utm)
    if e.anonymous_id:
        d["a"] = e.anonymous_id
    if e.user_id:
        d["uid"] = e.user_id
    if e.referrer:
        d["r"] = e.referrer
    return d


def _frozen(v: Any) -> Any:
    return MappingProxyType(v) if v else EMPTY


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """Inverse of event_to_dict."""
    get = d.get
    return make_event(
        d["m"],
        d["l"],
        d["t"],
        d["ts"],
        get("n", ""),
        get("s", ""),
        _frozen(get("p")),
        _frozen(get("tr")),
        get("u", ""),
        _frozen(get("utm")),
        get("a"),
        get("uid"),
        get("r", ""),
    )


def dumps(obj: Any) -> bytes:
    """orjson with read-only mappings allowed."""
    return orjson.dumps(obj, default=_default)


def encode_event(e: Event) -> bytes:
    """Event -> bytes for an internal topic."""
    return dumps(event_to_dict(e))


def decode_event(raw: bytes) -> Event:
    """bytes from an internal topic -> Event."""
    return event_from_dict(orjson.loads(raw))


# -- envelopes: many encoded events in one record of an internal topic ------------------
# Faust's per-record cost (fetch, conductor, stream, ack) dwarfs the scoring work, so the
# internal hops carry one record per destination partition per batch instead of one per
# event. Encoded events are single-line JSON (orjson escapes newlines inside strings), so a
# newline separates them; a record written before envelopes is an envelope of one line.

#: Well under the default 1 MB record limit, and small enough that Faust's buffers, which
#: count records, hold little memory; large enough to carry ~100 events.
ENVELOPE_MAX_BYTES = 64 * 1024
#: A decay-timer request in an envelope is told apart from an encoded event by its start.
TICK_PREFIX = b'{"tick":'


def pack(lines: Iterable[bytes], max_bytes: int = ENVELOPE_MAX_BYTES) -> list[bytes]:
    """Join lines into envelopes of at most `max_bytes` (a longer single line stands alone)."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > max_bytes:
            out.append(b"\n".join(chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        out.append(b"\n".join(chunk))
    return out


def unpack(value: bytes) -> list[bytes]:
    """The lines of an envelope, in order."""
    return value.split(b"\n") if value else []


#: The assign step's word of a lead's owner, told apart the same way.
OWNER_PREFIX = b'{"owner_of":'


#: Lines of a leads-topic envelope that are requests to the score step, not events.
CONTROL_PREFIXES = (TICK_PREFIX, OWNER_PREFIX)


@dataclass(frozen=True, slots=True)
class OwnerUpdate:
    """The owner, team and alert the assign step chose for a lead, for the lead's state."""

    lead_id: str
    owner: str | None
    team: str | None
    alert_id: str | None


@dataclass(frozen=True, slots=True)
class TickRequest:
    """A request to run the core's `tick` for a lead at `at_ms` (decay without events)."""

    lead_id: str
    at_ms: int


def encode_owner(update: OwnerUpdate) -> bytes:
    """An `OwnerUpdate` as a leads-topic line."""
    return orjson.dumps({"owner_of": update.lead_id, "owner": update.owner,
                         "team": update.team, "alert_id": update.alert_id})


def encode_tick(request: TickRequest) -> bytes:
    """A `TickRequest` as a leads-topic line."""
    return orjson.dumps({"tick": request.at_ms, "l": request.lead_id})


def owner_line(lead: str, owner: Mapping[str, Any]) -> bytes:
    """The owner, team and alert the assign step chose for `lead`, for the lead's state."""
    return encode_owner(OwnerUpdate(lead, owner.get("owner"), owner.get("team"),
                                    owner.get("alert_id")))


def tick_line(lead: str, at_ms: int) -> bytes:
    """A request to run the core's `tick` for `lead` at `at_ms` (decay without events)."""
    return encode_tick(TickRequest(lead, at_ms))


LeadsLine = Event | OwnerUpdate | TickRequest


# -- assign commands: the records of the <app>-assign topic, keyed by team --------------


@dataclass(frozen=True, slots=True)
class AlertCommand:
    """A hot lead's alert to give an owner (built by the score stage). `alert` is the
    routing alert's body plus the fields only the assign step reads (`assign._INTERNAL`);
    its SLA runs from `routed_ms`, when the score stage routed it."""

    alert: Mapping[str, Any]
    routed_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AckCommand:
    """A rep's acknowledgement of `alert_id` (None: of every alert of the lead) at `at_ms`."""

    lead_id: str
    alert_id: str | None
    at_ms: int
    event: str | None = None


@dataclass(frozen=True, slots=True)
class SlaTick:
    """The SLA timer's request to act on a team's alerts whose SLA lapsed by `now_ms`."""

    now_ms: int


AssignCommand = AlertCommand | AckCommand | SlaTick


def encode_assign(cmd: AssignCommand) -> bytes:
    """An assign command as its record on the assign topic (`{"op": ..., ...}`)."""
    if isinstance(cmd, AlertCommand):
        return dumps({"op": "alert", "alert": cmd.alert, "routed_ms": cmd.routed_ms})
    if isinstance(cmd, AckCommand):
        return orjson.dumps({"op": "ack", "lead_id": cmd.lead_id, "alert_id": cmd.alert_id,
                             "at_ms": cmd.at_ms, "event": cmd.event})
    return orjson.dumps({"op": "tick", "now_ms": cmd.now_ms})


def decode_assign(raw: bytes) -> AssignCommand:
    """An assign-topic record -> its command; a ValueError names what is wrong."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"assign command is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"assign command is a JSON {type(d).__name__}, not an object")
    op = d.get("op")
    if op == "alert" and not isinstance(d.get("alert"), dict):
        raise ValueError("assign command 'alert': `alert` is missing or not an object")
    try:
        if op == "alert":
            alert = d["alert"]
            routed = d.get("routed_ms")
            return AlertCommand(alert, int(routed) if routed is not None else None)
        if op == "ack":
            aid = d.get("alert_id")
            return AckCommand(str(d["lead_id"]), aid if isinstance(aid, str) else None,
                              int(d["at_ms"]), d.get("event"))
        if op == "tick":
            return SlaTick(int(d["now_ms"]))
    except KeyError as exc:
        raise ValueError(f"assign command {op!r} has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"assign command {op!r}: {exc}") from exc
    raise ValueError(f"assign command has unknown op {op!r} (expected alert, ack or tick)")


def decode_leads_line(line: bytes, record_key: bytes | None) -> LeadsLine:
    """One line of a leads-topic envelope; `record_key` names the lead of a keyed tick
    (the form older versions sent)."""
    if line.startswith(OWNER_PREFIX):
        own = orjson.loads(line)
        return OwnerUpdate(own["owner_of"], own.get("owner"), own.get("team"),
                           own.get("alert_id"))
    if line.startswith(TICK_PREFIX):
        req = orjson.loads(line)
        lead = req.get("l")
        if not lead:
            if record_key is None:
                raise ValueError("a tick request with no lead and no record key")
            lead = record_key.decode()
        return TickRequest(lead, int(req["tick"]))
    return decode_event(line)


# The decay timer scans every stored lead record; decoding each would cost more than the
# scan. These test the bytes `dumps` writes for a lead state (orjson: no spaces), so the
# layout they rely on is the one this module produces.
_HOT_MARK = b'"hot":true'


def stage_marks(stages: Iterable[str]) -> tuple[bytes, ...]:
    """Byte patterns of `"stage":"<st>"` as `dumps` writes them, for `may_hold`."""
    return tuple(f'"stage":"{st}"'.encode() for st in sorted(stages))


def may_hold(raw: bytes, marks: tuple[bytes, ...]) -> bool:
    """Whether an encoded lead record may be hot or in one of the stages of `marks`
    (False only when it certainly is not; decode to be sure)."""
    return _HOT_MARK in raw or any(m in raw for m in marks)
