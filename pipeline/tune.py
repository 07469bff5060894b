"""Hot and MQL lines fitted to what sales can work, from a backtest over past events.

For a team, capacity is the alerts its reps can take over the backtest period: each day
of the period, the sum of the `daily_cap` of the available reps who work that weekday
(their hours, else the team's; no hours: every day) and are not away that day, or
`capacity` per working day when given. The team's alerts are those the backtest raises
for leads routed to it (instant triggers, hot score and PQL). The hot line is moved in
steps over every line the rules allow, the MQL line with it (it keeps its distance below
hot, and an explicit `cool_below` its distance too), and the proposal is the lowest hot
line whose alerts fit (the most leads sales can still work), found by halving. Instant
and PQL alerts do not depend on the hot line, so when they alone exceed the capacity no
line can fit, and the result says so. With several teams the line is shared (one rules
file), so it must fit every one of them.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.backtest import Run, alerts_per_team_day, run
from pipeline.core.calendar import WeeklyHours
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, StageMove
from pipeline.core.routing import Rep, Team
from pipeline.core.rules import CompiledRules, Thresholds, compile_rules, fit_ceiling
from pipeline.errors import LeadflowError

#: The hot line moves in steps of this many points.
STEP = 5


class TuneError(LeadflowError):
    """`leadflow rules tune` was asked something it cannot answer (a team, a capacity)."""


@dataclass(frozen=True, slots=True)
class Lines:
    """The lines tune moves."""

    hot: float
    mql: float


@dataclass(frozen=True, slots=True)
class Funnel:
    """What one set of lines does over the events."""

    lines: Lines
    alerts: dict[str, int]  # team -> alerts over the period
    alerts_by_kind: dict[str, int]  # instant, hot_score, pql: every team
    mql_moves: int  # leads moved to mql
    stages: dict[str, int]  # final stage -> leads


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a team can work over the period."""

    team: str
    total: int  # alerts over the period
    working_days: int
    days: int
    per_working_day: str  # how it was counted, for people


@dataclass(frozen=True, slots=True)
class Proposal:
    """The tune result: capacities, the lines now and the proposed ones (None: none fits)."""

    capacities: tuple[Capacity, ...]
    now: Funnel
    proposed: Funnel | None
    first_day: str
    last_day: str
    #: With no proposal: per team, the alerts no line holds back (instant and PQL).
    floor: dict[str, int]
    #: Teams left out (all teams asked): why their capacity is unknown.
    unfitted: dict[str, str]


def _works(hours: WeeklyHours | None, day: dt.date) -> bool:
    return hours is None or any(s.day == day.weekday() for s in hours.spans)


def _rep_works(team: Team, rep: Rep, day: dt.date) -> bool:
    away = any(a.start <= day <= a.to for a in rep.away)
    return not away and _works(rep.hours if rep.hours is not None else team.hours, day)


def capacity(team: Team, days: Sequence[dt.date], per_day: int | None = None) -> Capacity:
    """`team`'s alerts over `days`: its reps' daily caps, or `per_day` per working day."""
    if per_day is not None and per_day < 0:
        raise TuneError(f"capacity must be 0 or more alerts per working day, got {per_day}")
    reps = [r for r in team.reps if r.available]
    working = [d for d in days if _works(team.hours, d)]
    if per_day is not None:
        return Capacity(team.name, per_day * len(working), len(working), len(days),
                        f"{per_day} per working day (--capacity)")
    if not reps:
        raise TuneError(f"team {team.name!r} has no available reps, so no daily_cap to fit; "
                        "give --capacity")
    uncapped = [r.id for r in reps if r.daily_cap is None]
    if uncapped:
        raise TuneError(f"team {team.name!r}: rep(s) {', '.join(uncapped)} have no daily_cap, "
                        "so the team's capacity is unknown; set daily_cap or give --capacity")
    total = sum(r.daily_cap or 0 for d in days for r in reps if _rep_works(team, r, d))
    caps = " + ".join(f"{r.id} {r.daily_cap}" for r in reps)
    return Capacity(team.name, total, len(working), len(days), f"daily_cap {caps}")


def with_lines(rules: CompiledRules, lines: Lines) -> CompiledRules | None:
    """The rules with other hot and MQL lines, or None when the rules forbid those lines."""
    model = rules.model
    th = model.thresholds
    cool = None if th.cool_below is None else th.cool_below + (lines.hot - th.hot)
    try:
        new = Thresholds.model_validate({**th.model_dump(), "hot": lines.hot,
                                         "mql": lines.mql, "cool_below": cool})
    except ValueError:
        return None
    if fit_ceiling(model) >= min(new.mql, new.cooling_line()):
        return None  # `rules check` refuses these: fit alone would make an MQL or keep hot
    return compile_rules(model.model_copy(update={"thresholds": new}))


def funnel(r: Run, rules: CompiledRules, lines: Lines) -> Funnel:
    per_day = alerts_per_team_day(r, rules)
    alerts: Counter[str] = Counter()
    for counts in per_day.values():
        alerts.update(counts)
    return Funnel(
        lines=lines, alerts=dict(alerts),
        alerts_by_kind=dict(Counter(o.kind for o in r.outputs if isinstance(o, AlertTrigger))),
        mql_moves=sum(1 for o in r.outputs if isinstance(o, StageMove) and o.to_stage == "mql"),
        stages=dict(Counter(s.stage for s in r.states.values())))


def _days(events: Sequence[Event]) -> list[dt.date]:
    first = min(e.timestamp_ms for e in events)
    last = max(e.timestamp_ms for e in events)
    a = dt.datetime.fromtimestamp(first / 1000, dt.UTC).date()
    b = dt.datetime.fromtimestamp(last / 1000, dt.UTC).date()
    return [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]


def propose(events: Sequence[Event], rules: CompiledRules, *, team: str | None = None,
            per_day: int | None = None) -> Proposal:
    """The lowest hot line (MQL with it) whose alerts fit `team` (None: every team)."""
    names = [t.name for t in rules.routing.teams]
    if team is not None and team not in names:
        raise TuneError(f"no team {team!r} in the rules (teams: {', '.join(names)})")
    if not events:
        raise TuneError("no events to tune on")
    days = _days(events)
    if per_day is not None and per_day < 0:
        raise TuneError(f"capacity must be 0 or more alerts per working day, got {per_day}")
    found: list[Capacity] = []
    unfitted: dict[str, str] = {}
    for t in rules.routing.teams:
        if team is not None and t.name != team:
            continue
        try:
            found.append(capacity(t, days, per_day))
        except TuneError as exc:
            if team is not None:
                raise
            unfitted[t.name] = str(exc)  # all teams: fit those whose capacity is known
    if not found:
        raise TuneError("no team has a known capacity: " + "; ".join(unfitted.values()))
    caps = tuple(found)
    th = rules.model.thresholds
    now_lines = Lines(th.hot, th.mql)
    now = funnel(run(events, rules), rules, now_lines)
    gap = th.hot - th.mql
    g = rules.model.groups
    top = sum(x.weight * (x.max if x.max is not None else 200)
              for x in (g.fit, g.engagement, g.product))
    candidates: list[tuple[Lines, CompiledRules]] = []
    for hot in range(STEP, int(top) + 2 * STEP, STEP):
        lines = Lines(float(hot), float(hot - gap))
        r = with_lines(rules, lines)
        if r is not None:
            candidates.append((lines, r))
    runs: dict[int, Funnel] = {}

    def at(i: int) -> Funnel:
        if i not in runs:
            lines, r = candidates[i]
            runs[i] = now if lines == now_lines else funnel(run(events, r), r, lines)
        return runs[i]

    def fits(f: Funnel) -> bool:
        return all(f.alerts.get(c.team, 0) <= c.total for c in caps)

    # Alerts fall as the line rises, so halving finds the lowest line that fits with a
    # backtest per step, not one per line; the line below the answer is known not to fit.
    best: Funnel | None = None
    if candidates and fits(at(len(candidates) - 1)):
        lo, hi = -1, len(candidates) - 1  # lo: does not fit (or none), hi: fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(at(mid)):
                hi = mid
            else:
                lo = mid
        best = at(hi)
    highest = at(len(candidates) - 1) if candidates else None
    floor: dict[str, int] = {}
    if best is None and highest is not None:
        floor = {c.team: highest.alerts.get(c.team, 0) for c in caps}
    return Proposal(caps, now, best, days[0].isoformat(), days[-1].isoformat(), floor,
                    unfitted)
