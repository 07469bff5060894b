"""The normalized event the core scores; Segment parsing lives in pipeline.models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

EventType = Literal["track", "page", "identify", "alias", "group"]

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
