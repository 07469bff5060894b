"""Working hours, pure: when a rep or a team is at work, and SLA due times in business hours.

All instants are epoch milliseconds passed in by the caller (event or command time); the
core never reads a clock. Local times are resolved with the stdlib `zoneinfo` (the `tzdata`
package supplies the zones where the system has none), so a DST change moves the UTC instant
of "09:00" but never the local opening time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from pipeline.core.routing import Rep, Team

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Longest stretch searched for an opening: a year of leave plus slack; past it the calendar
# counts as never open and callers fall back to wall-clock behaviour.
SEARCH_DAYS = 400
_TIME = re.compile(r"^(\d{2}):(\d{2})$")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or a ValueError a rules author can act on."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as "
                         "Europe/Berlin or America/New_York") from None


def check_zone(name: str | None) -> str | None:
    """Field validator body: the name itself once it resolves."""
    if name is not None:
        zone(name)
    return name


def _minutes(text: str, *, end: bool) -> int:
    m = _TIME.match(text.strip())
    if m is None:
        raise ValueError(f"malformed time {text!r}: expected HH:MM")
    h, mi = int(m.group(1)), int(m.group(2))
    if mi > 59 or h > 24 or (h == 24 and (mi or not end)):
        raise ValueError(f"malformed time {text!r}: hours 00-23 (24:00 only as an end), "
                         "minutes 00-59")
    return h * 60 + mi


def _days(spec: str) -> list[int]:
    out: list[int] = []
    for part in str(spec).lower().split(","):
        lo, _, hi = part.strip().partition("-")
        if lo not in DAYS or (hi and hi not in DAYS):
            raise ValueError(f"unknown day {part.strip()!r}: use mon..sun, a range such as "
                             "mon-fri, or a list such as mon,wed")
        a, b = DAYS.index(lo), DAYS.index(hi or lo)
        if b < a:
            raise ValueError(f"day range {part.strip()!r} runs backwards: write it as "
                             "two ranges, e.g. sat-sun,mon")
        out.extend(range(a, b + 1))
    return out


@dataclass(frozen=True, slots=True)
class Span:
    """One opening on a weekday (0 = Monday), in minutes after local midnight."""

    day: int
    start: int
    end: int


class WeeklyHours(BaseModel):
    """Working hours per weekday, written `{mon-fri: "09:00-17:30", sat: "10:00-14:00"}`.

    A value may be a list for split shifts (`["09:00-12:00", "13:00-17:00"]`). Days not
    named are days off. `text` keeps the author's wording for skip reasons.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spans: tuple[Span, ...] = Field(min_length=1)
    text: str

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if not isinstance(v, dict) or "spans" in v:
            return v
        spans: list[Span] = []
        words: list[str] = []
        for spec, ranges in v.items():
            items = ranges if isinstance(ranges, list | tuple) else [ranges]
            if not items:
                raise ValueError(f"{spec}: no hours given; leave the day out for a day off")
            for r in items:
                start_s, sep, end_s = str(r).partition("-")
                if not sep:
                    raise ValueError(f"{spec}: malformed hours {r!r}: expected HH:MM-HH:MM")
                start, end = _minutes(start_s, end=False), _minutes(end_s, end=True)
                if end <= start:
                    raise ValueError(f"{spec}: hours {r!r} end before they start (a shift "
                                     "past midnight is two entries, one per day)")
                spans.extend(Span(d, start, end) for d in _days(str(spec)))
            words.append(f"{spec} {', '.join(str(r) for r in items)}")
        spans.sort(key=lambda s: (s.day, s.start))
        for a, b in pairwise(spans):
            if a.day == b.day and b.start < a.end:
                raise ValueError(f"overlapping hours on {DAYS[a.day]}: "
                                 f"{_hhmm(a.start)}-{_hhmm(a.end)} and "
                                 f"{_hhmm(b.start)}-{_hhmm(b.end)}")
        return {"spans": tuple(spans), "text": "; ".join(words)}


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Away(BaseModel):
    """Out of office from one date to another, both included, in the rep's time zone."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    start: date = Field(alias="from")
    to: date

    @model_validator(mode="after")
    def _ordered(self) -> Away:
        if self.to < self.start:
            raise ValueError(f"away range ends ({self.to}) before it starts ({self.start})")
        return self


@dataclass(frozen=True, slots=True)
class Calendar:
    """When someone is at work: hours in a zone (None: every hour), minus away dates."""

    tz: str = "UTC"
    hours: WeeklyHours | None = None
    away: tuple[Away, ...] = ()

    def describe(self) -> str:
        """E.g. "Europe/Berlin mon-fri 09:00-17:30", for skip reasons."""
        return f"{self.tz} {self.hours.text}" if self.hours else f"{self.tz} all hours"

    def away_on(self, at_ms: int) -> Away | None:
        """The away range covering the local date of `at_ms`, if any."""
        d = _local(at_ms, zone(self.tz)).date()
        return next((a for a in self.away if a.start <= d <= a.to), None)

    def spans(self, from_ms: int) -> Iterator[tuple[int, int]]:
        """Open stretches [start, end) in epoch ms that end after `from_ms`, in order."""
        tz = zone(self.tz)
        day0 = _local(from_ms, tz).date()
        pending: tuple[int, int] | None = None  # merges 24:00 with next day's 00:00
        for i in range(-1, SEARCH_DAYS):
            d = day0 + timedelta(days=i)
            if any(a.start <= d <= a.to for a in self.away):
                continue
            if self.hours is None:
                day_spans = [(0, 24 * 60)]
            else:
                day_spans = [(s.start, s.end) for s in self.hours.spans if s.day == d.weekday()]
            for start, end in day_spans:
                s_ms, e_ms = _at(d, start, tz), _at(d, end, tz)
                if pending is not None and pending[1] == s_ms:
                    pending = (pending[0], e_ms)
                    continue
                if pending is not None and pending[1] > from_ms:
                    yield pending
                pending = (s_ms, e_ms)
        if pending is not None and pending[1] > from_ms:
            yield pending

    def next_open(self, at_ms: int) -> int | None:
        """`at_ms` itself when at work then, else the next opening; None when never."""
        if self.hours is None and not self.away:  # the common case: no calendar at all
            return at_ms
        for start, _end in self.spans(at_ms):
            return max(start, at_ms)
        return None

    def is_open(self, at_ms: int) -> bool:
        """Whether at work at `at_ms`."""
        return self.next_open(at_ms) == at_ms

    def add(self, start_ms: int, duration_ms: int) -> int | None:
        """The instant `duration_ms` of open time after `start_ms`; None when never."""
        if self.hours is None and not self.away:
            return start_ms + duration_ms
        left = duration_ms
        for s, e in self.spans(start_ms):
            s = max(s, start_ms)
            if left <= e - s:
                return s + left
            left -= e - s
        return None


def _local(at_ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(tz)


def _at(d: date, minutes: int, tz: ZoneInfo) -> int:
    # A wall time that a DST jump skips resolves with fold=0 (the offset before the jump).
    extra, minutes = divmod(minutes, 24 * 60)
    local = datetime.combine(d + timedelta(days=extra), time(minutes // 60, minutes % 60),
                             tzinfo=tz)
    return int(local.timestamp() * 1000)


def rep_calendar(team: Team, rep: Rep) -> Calendar:
    """A rep's calendar: their own zone and hours, else the team's, plus their away dates."""
    return Calendar(tz=rep.timezone or team.timezone or "UTC",
                    hours=rep.hours or team.hours, away=rep.away)


def team_calendar(team: Team) -> Calendar:
    """The team's own calendar, which its business-hours SLA clock runs on."""
    return Calendar(tz=team.timezone or "UTC", hours=team.hours)


def unavailable(team: Team, rep: Rep, at_ms: int) -> str | None:
    """Why `rep` cannot take a lead at `at_ms` by their calendar, None when they can."""
    cal = rep_calendar(team, rep)
    away = cal.away_on(at_ms)
    if away is not None:
        return f"away {away.start} to {away.to}"
    if not cal.is_open(at_ms):
        return f"outside working hours ({cal.describe()})"
    return None


def closed_until(team: Team, at_ms: int) -> int | None:
    """When a team with every rep off or away at `at_ms` opens; None when it is open.

    Reps marked `available: false` do not open the team; a team whose reps are all
    unavailable (or that has none) is not "closed" but unstaffed, as before.
    """
    opens: list[int] = []
    for rep in team.reps:
        if not rep.available:
            continue
        nxt = rep_calendar(team, rep).next_open(at_ms)
        if nxt == at_ms:
            return None
        if nxt is not None:
            opens.append(nxt)
    return min(opens) if opens else None


def sla_due(team: Team, start_ms: int, sla_ms: int) -> int:
    """When an SLA of `sla_ms` started at `start_ms` lapses, by the team's `sla_clock`."""
    if team.sla_clock == "business_hours" and team.hours is not None:
        due = team_calendar(team).add(start_ms, sla_ms)
        if due is not None:
            return due
    return start_ms + sla_ms
