"""Marketing touches: where an event says the lead came from, its channel, and the journey.

A touch is read from an event's Segment `context.campaign` (name, source, medium), else
from the UTM parameters of its page URL, and its referrer's host. An event with none of
these is no touch, except the lead's very first page view, which is a `direct` touch when
the rules classify it so: later page views without a source would bury every campaign
under "direct" between its clicks. A referrer on the page's own host is navigation, not
a touch. Nothing here raises on bad input: a value that is not text, a URL that does not
parse or a UTM value with control characters gives a touch without that field.

The journey kept per lead is bounded (`MAX_TOUCHES`): consecutive touches of one channel
are folded into the first (with a count and the time of the latest), and when it is full
the oldest touch that carries no mark is dropped. Marks name the stages a touch was the
latest touch before (`lead` for the lead-creation touch); the first touch is never dropped,
and the newest is the last touch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipeline.core.event import Event

MAX_TOUCHES = 16
#: Longest source/medium/campaign value kept; campaign names are free text.
MAX_VALUE = 100
#: Channel of a touch that no channel rule matches.
OTHER = "other"
#: The mark of the touch that was the latest when the lead became known.
CREATED = "lead"


@dataclass(frozen=True, slots=True)
class Touch:
    """One marketing touch: where it came from and its channel, by the rules in force."""

    channel: str
    at_ms: int
    message_id: str
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    referrer: str | None = None  # the referring host only: paths and queries may hold PII
    count: int = 1  # touches of this channel folded into this one
    last_ms: int = 0  # the latest folded touch's time
    marks: tuple[str, ...] = ()  # stages this touch was the latest touch before

    def to_list(self) -> list[Any]:
        """The compact form stored in the lead's state (`from_list` reverses it)."""
        return [self.channel, self.at_ms, self.message_id, self.source, self.medium,
                self.campaign, self.referrer, self.count, self.last_ms, list(self.marks)]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> Touch:
        """Rebuild a touch from `to_list` output (through the slot setters, as `make_touch`:
        every read of a lead rebuilds its touches)."""
        t = _new(Touch)
        st = _T_SET
        st[0](t, str(v[0]))
        st[1](t, int(v[1]))
        st[2](t, str(v[2]))
        st[3](t, v[3])
        st[4](t, v[4])
        st[5](t, v[5])
        st[6](t, v[6])
        st[7](t, int(v[7]))
        st[8](t, int(v[8]))
        st[9](t, tuple(v[9]))
        return t

    def with_mark(self, mark: str) -> Touch:
        """The touch with one more mark (kept once)."""
        if mark in self.marks:
            return self
        return Touch(self.channel, self.at_ms, self.message_id, self.source, self.medium,
                     self.campaign, self.referrer, self.count, self.last_ms,
                     (*self.marks, mark))


_T_FIELDS = ("channel", "at_ms", "message_id", "source", "medium", "campaign", "referrer",
             "count", "last_ms", "marks")
_T_SET = tuple(getattr(Touch, n).__set__ for n in _T_FIELDS)  # the slots' setters, in order
_new = object.__new__


def make_touch(channel: str, at_ms: int, message_id: str, source: str | None,
               medium: str | None, campaign: str | None, referrer: str | None, count: int,
               last_ms: int, marks: tuple[str, ...]) -> Touch:
    """`Touch(...)` with every field in order, through the slot setters (as `make_state`):
    the frozen `__init__` costs more than the rest of folding a touch."""
    t = object.__new__(Touch)
    for setter, v in zip(_T_SET, (channel, at_ms, message_id, source, medium, campaign,
                                  referrer, count, last_ms, marks), strict=True):
        setter(t, v)
    return t


@dataclass(frozen=True, slots=True)
class TouchFields:
    """What an event says about its origin, before classification."""

    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    referrer: str | None = None

    def empty(self) -> bool:
        """True when the event names no source, medium, campaign or referrer."""
        return (self.source is None and self.medium is None and self.campaign is None
                and self.referrer is None)


@dataclass(frozen=True, slots=True)
class ChannelPattern:
    """One way to recognise a channel: every field given must hold (globs, any case)."""

    source: tuple[str, ...] | None = None
    medium: tuple[str, ...] | None = None
    campaign: tuple[str, ...] | None = None
    referrer: tuple[str, ...] | None = None
    direct: bool | None = None  # true: nothing names the origin; false: something does

    def matches(self, f: TouchFields) -> bool:
        """Whether the fields of a touch meet this pattern."""
        if self.direct is not None and self.direct != f.empty():
            return False
        return (_globs(self.source, f.source) and _globs(self.medium, f.medium)
                and _globs(self.campaign, f.campaign) and _globs(self.referrer, f.referrer))


def _globs(patterns: tuple[str, ...] | None, value: str | None) -> bool:
    if patterns is None:
        return True
    if value is None:
        return False
    v = value.lower()
    return any(fnmatch.fnmatchcase(v, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel of the rules file: its name and the patterns that recognise it (any)."""

    name: str
    patterns: tuple[ChannelPattern, ...]


def classify(channels: Sequence[Channel], f: TouchFields) -> str:
    """The first channel whose patterns match, in file order; `OTHER` when none does."""
    for ch in channels:
        for p in ch.patterns:
            if p.matches(f):
                return ch.name
    return OTHER


# -- extraction ----------------------------------------------------------------------------

_NONE = TouchFields()


def _clean(v: Any) -> str | None:
    """A usable text value, trimmed and bounded, or None (not text, empty, control chars)."""
    if not isinstance(v, str | int) or isinstance(v, bool):
        return None
    s = str(v).strip()
    if not s or not s.isprintable():
        return None
    return s[:MAX_VALUE]


def _split(url: str) -> tuple[str | None, dict[str, list[str]]]:
    """(host, query parameters) of a URL; (None, {}) when it does not parse as one."""
    if not url or not isinstance(url, str):
        return None, {}
    try:
        parts = urlsplit(url)
        host = parts.hostname
        query = parse_qs(parts.query, max_num_fields=50) if parts.query else {}
    except ValueError:
        return None, {}
    return (host.lower() if host else None), query


def _param(query: Mapping[str, list[str]], name: str) -> str | None:
    vals = query.get(name)
    return _clean(vals[0]) if vals else None


def touch_fields(e: Event) -> TouchFields:
    """The origin an event names: `context.campaign`, else its URL's UTM parameters, and the
    referrer's host unless it is the page's own. The URL is parsed only when it is needed."""
    utm = e.utm
    if utm:
        source, medium = _clean(utm.get("source")), _clean(utm.get("medium"))
        campaign = _clean(utm.get("name")) or _clean(utm.get("campaign"))
    else:
        source, medium, campaign = None, None, None
    host: str | None = None
    parsed = False
    if source is None and medium is None and campaign is None and "utm_" in e.url:
        host, query = _split(e.url)
        parsed = True
        source = _param(query, "utm_source")
        medium = _param(query, "utm_medium")
        campaign = _param(query, "utm_campaign")
    referrer = None
    if e.referrer:
        ref_host, _ = _split(e.referrer)
        if ref_host is not None:
            if not parsed:
                host, _ = _split(e.url)
            if ref_host != host:
                referrer = ref_host
    return TouchFields(source, medium, campaign, referrer)


def may_touch(e: Event) -> bool:
    """A cheap test: can this event name an origin at all (most events cannot)?"""
    return bool(e.utm or e.referrer or ("utm_" in e.url))


#: Most touches repeat a few campaigns: their channels are remembered, up to this many.
CACHE_MAX = 10_000


def extract(e: Event, channels: Sequence[Channel], first: bool,
            cache: dict[TouchFields, str] | None = None) -> Touch | None:
    """The event's touch, or None; `first`: the lead has no touch yet (a direct visit counts).

    `cache` remembers the channel of fields already classified (bounded; never changes a
    result): it belongs to one set of channels.
    """
    f = touch_fields(e) if may_touch(e) else _NONE
    if f.empty() and not (first and e.type == "page"):
        return None
    if cache is None:
        ch = classify(channels, f)
    else:
        got = cache.get(f)
        if got is None:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            got = cache[f] = classify(channels, f)
        ch = got
    if f.empty() and ch == OTHER:
        return None  # the rules name no channel for a sourceless visit: not a touch
    return make_touch(ch, e.timestamp_ms, e.message_id, f.source, f.medium, f.campaign,
                      f.referrer, 1, e.timestamp_ms, ())


# -- the journey ---------------------------------------------------------------------------


def add(journey: tuple[Touch, ...], t: Touch) -> tuple[Touch, ...]:
    """The journey with `t` added: folded into the last touch when of the same channel,
    else appended, dropping the oldest unmarked touch after the first when over the bound."""
    if journey:
        last = journey[-1]
        if last.channel == t.channel:
            folded = make_touch(last.channel, last.at_ms, last.message_id, last.source,
                                last.medium, last.campaign, last.referrer, last.count + 1,
                                max(last.last_ms, t.at_ms), last.marks)
            return (*journey[:-1], folded)
    out = [*journey, t]
    while len(out) > MAX_TOUCHES:
        drop = next((i for i in range(1, len(out) - 1) if not out[i].marks), 1)
        del out[drop]
    return tuple(out)


def mark_last(journey: tuple[Touch, ...], stage: str) -> tuple[Touch, ...]:
    """The journey with its latest touch marked as the one before a move to `stage`."""
    if not journey:
        return journey
    return (*journey[:-1], journey[-1].with_mark(stage))


def created_index(journey: Sequence[Touch]) -> int | None:
    """The position of the lead-creation touch, if the lead had a touch when it became known."""
    return next((i for i, t in enumerate(journey) if CREATED in t.marks), None)
