"""The normalized event the core scores; Segment parsing lives in pipeline.models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

#: Segment's call types: the one list the models, the rules and the collector use.
EventType = Literal["track", "page", "screen", "identify", "alias", "group"]
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    # A shared read-only mapping: dataclasses refuse it as a plain default (unhashable).
    return EMPTY


@dataclass(frozen=True, slots=True)
class Event:
    """One inbound call, already validated, keyed by the lead it belongs to.

    `timestamp_ms` is event time (the Segment `timestamp`), in epoch milliseconds: the core
    never reads a clock, so decay and windows are computed from this value alone.
    """

    message_id: str
    lead_id: str
    type: EventType
    timestamp_ms: int
    name: str = ""  # track: the event name; page: the page name (may be "")
    source: str = ""  # web | email | product | crm (the input topic's source)
    properties: Mapping[str, Any] = field(default_factory=_empty)
    traits: Mapping[str, Any] = field(default_factory=_empty)
    url: str = ""  # page URL (properties.url or context.page.url)
    utm: Mapping[str, str] = field(default_factory=_empty)  # context.campaign (source, medium...)
    anonymous_id: str | None = None
    user_id: str | None = None
    referrer: str = ""  # the referring URL (properties.referrer or context.page.referrer)


_FIELDS = ("message_id", "lead_id", "type", "timestamp_ms", "name", "source", "properties",
           "traits", "url", "utm", "anonymous_id", "user_id", "referrer")
if tuple(f.name for f in fields(Event)) != _FIELDS:
    raise RuntimeError("Event's fields changed: update make_event")
_SET = tuple(getattr(Event, n).__set__ for n in _FIELDS)  # the slots' setters, in order
_new = object.__new__


def make_event(
    message_id: str,
    lead_id: str,
    type: EventType,
    timestamp_ms: int,
    name: str,
    source: str,
    properties: Mapping[str, Any],
    traits: Mapping[str, Any],
    url: str,
    utm: Mapping[str, str],
    anonymous_id: str | None,
    user_id: str | None,
    referrer: str = "",
) -> Event:
    """`Event(...)` with every field given in order, without the frozen `__init__`'s cost.

    Every event is built three times on its way through a worker (at ingest and when each
    internal hop decodes it), and the frozen dataclass `__init__` sets each field through
    `object.__setattr__`; this writes the slots directly (README has the figures). The
    result is the same: Event has no `__post_init__` and validates nothing.
    """
    e = _new(Event)
    _SET[0](e, message_id)
    _SET[1](e, lead_id)
    _SET[2](e, type)
    _SET[3](e, timestamp_ms)
    _SET[4](e, name)
    _SET[5](e, source)
    _SET[6](e, properties)
    _SET[7](e, traits)
    _SET[8](e, url)
    _SET[9](e, utm)
    _SET[10](e, anonymous_id)
    _SET[11](e, user_id)
    _SET[12](e, referrer)
    return e
