"""A second, independent model of what the scoring core decides, for tests to compare against.

Written from the documented semantics (README "The rules file", the shipped rules file's
comments, the product description, the rules models' docstrings in `pipeline/core/rules.py`,
the move table documented in `pipeline/core/stages.py`), not from the engine: it imports
nothing from `pipeline.core.engine`, the `pipeline.core.stages` helpers or
`pipeline.core.breakdown`, and it reads the rules from the validated rules model
(`CompiledRules.model`), matching events and testing traits itself rather than through the
compiled predicates and match cache.
It is written for clarity, not speed: every event checks every rule and every line, and
history is kept whole (every cap window, every counted event time), the documented bounds
applied where it is read.

Covered, per lead and per event in arrival order: dedup by message id; decay on inactivity
(half-life or points per period, from event time, for the decaying groups, late events' own
points decayed since their time) and the recycle and cooling it causes, also from `tick`;
identification; fit from the latest traits; CRM moves (accepted, rejected, qualified with the
SQL criteria, opportunity, won, lost, disqualified); engagement, product and negative points
with caps per tumbling window and counted product rules; disqualifying rules; instant
triggers (stage and hot) with their own requirements; the mql, pql and hot lines; hot's
hysteresis; alerts with their kinds, the cooldown and its updates; the review, nurture and
recycle routing decisions.

Left out on purpose, so tests generate traces that avoid them:
- More than `MAX_SEEN` events per lead (the engine's own dedup memory; the shell keeps a
  longer window): every id is remembered here.
- Two trait values for one trait at the same event time (the engine breaks the tie
  arbitrarily but deterministically): traces give each event of a lead its own time.
- Numeric strings in range conditions, zero or false SQL criteria, rules with zero points.
- What is not a core decision: identity stitching, owners, teams, SLAs, business-hours
  calendars, the breakdown, refusal messages and reasons, rounded display totals.
A late event older than the last `MAX_CAP_WINDOWS` windows a capped rule scored in scores 0
for it (documented: its window's total is no longer known), and a counted rule counts a
late event only with its last `MAX_COUNT_TIMES` event times: both are modelled.

Where the documents leave a choice open, the model takes the engine's: a decay-timer tick
that changes no score, stage or hot flag leaves the lead untouched, the time its scores are
as of included (it shows only in how much a later late event's points decay); the alert
cooldown holds both ways in event time (an earlier-timestamped event inside it too); and
an update inside the cooldown names the lead's latest alert sent to a team.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.event import Event
from pipeline.core.rules import (
    Cap,
    CompiledRules,
    Count,
    EventMatch,
    Requirement,
    TraitCondition,
    Trigger,
)
from pipeline.core.state import MAX_CAP_WINDOWS, MAX_COUNT_TIMES

# -- what the model reports ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """The decay timer looking at a quiet lead at event time `now_ms`."""

    lead_id: str
    now_ms: int


Step = Event | Tick


@dataclass(frozen=True, slots=True)
class Move:
    """A stage change: from, to, the rule or line that caused it, the message that did."""

    from_stage: str
    to_stage: str
    cause: str
    message_id: str | None


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert for a team; `updates` is the index (in the lead's alerts) of the one it updates."""

    kind: str
    rule: str
    message_id: str | None
    updates: int | None


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision other than an alert: nurture, recycle or review."""

    route: str
    message_id: str | None
    rule: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What is compared for one lead."""

    stage: str
    hot: bool
    fit: float
    engagement: float
    product: float
    moves: tuple[Move, ...]
    alerts: tuple[Alert, ...]
    routes: tuple[Route, ...]


# -- the lifecycle, as documented: per cause, the stages each target may be reached from ----

_OPEN = frozenset({"visitor", "lead", "mql", "pql", "sal", "sql", "opportunity", "recycled"})
_FROM: Mapping[str, Mapping[str, frozenset[str]]] = {
    "identified": {"lead": frozenset({"visitor"})},
    "score": {"mql": frozenset({"lead", "recycled"})},
    "product": {"pql": frozenset({"lead", "mql", "recycled"})},
    "trigger": {"mql": frozenset({"lead", "recycled"}),
                "pql": frozenset({"lead", "mql", "recycled"}),
                "sql": frozenset({"lead", "recycled", "mql", "pql", "sal"})},
    "decay": {"recycled": frozenset({"mql", "pql"})},
    "crm": {"sal": frozenset({"mql", "pql"}),
            "sql": frozenset({"mql", "pql", "sal"}),
            "opportunity": frozenset({"mql", "pql", "sal", "sql"}),
            "customer": frozenset({"opportunity"}),
            "recycled": frozenset({"mql", "pql", "sal", "sql", "opportunity"}),
            "disqualified": _OPEN},
    "disqualify": {"disqualified": _OPEN},
}
# The CRM's track events and the stage each asks for (None: a sales touch, no move).
_CRM: Mapping[str, str | None] = {
    "Lead Accepted": "sal", "Lead Rejected": "recycled", "Lead Qualified": "sql",
    "Opportunity Created": "opportunity", "Deal Won": "customer", "Deal Lost": "recycled",
    "Lead Disqualified": "disqualified", "Lead Contacted": None, "Alert Acknowledged": None,
}
# A lead is alerted once known and until sales has an opportunity or closed it.
_ALERTED_IN = frozenset({"lead", "mql", "pql", "sal", "sql", "recycled"})
# Score-driven stages: the ones decay recycles.
_MARKETING = frozenset({"mql", "pql"})


# -- the rules, read from the validated model ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _EventRule:
    id: str
    group: str  # "engagement" or "product"
    points: int
    match: EventMatch
    cap: Cap | None
    count: Count | None
    trigger: Trigger | None
    disqualify: bool


@dataclass(frozen=True, slots=True)
class _TraitRule:
    id: str
    points: int
    when: TraitCondition
    disqualify: bool


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _trait_at(traits: Mapping[str, Any], path: str) -> Any:
    cur: Any = traits
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _domain(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value.split("@")[-1].strip().lower() or None


def _holds(c: TraitCondition, traits: Mapping[str, Any], free: frozenset[str]) -> bool:
    """One trait condition on the lead's latest traits (the first of its paths present)."""
    v = next((x for p in c.paths() if (x := _trait_at(traits, p)) is not None), None)
    if v is None:
        return False
    if c.contains_any is not None:  # whole words, case-insensitive; a keyword may be words
        have = _words(str(v))
        for kw in c.contains_any:
            want = _words(kw)
            if any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1)):
                return True
        return False
    if c.any_of is not None:
        return str(v).lower() in {x.lower() for x in c.any_of}
    if c.range is not None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        lo = -math.inf if c.range.min is None else c.range.min
        hi = math.inf if c.range.max is None else c.range.max
        return lo <= v <= hi
    dom = _domain(v)
    if dom is None:
        return False
    if c.free_email is not None:
        return (dom in free) is c.free_email
    if c.domain_in is not None:
        return dom in {x.lower() for x in c.domain_in}
    return any(dom.endswith(x.lower()) for x in c.domain_endswith or ())


def _matches(m: EventMatch, e: Event) -> bool:
    if e.type != m.type:
        return False
    if m.name is not None and e.name not in ([m.name] if isinstance(m.name, str) else m.name):
        return False
    if m.source is not None and e.source != m.source:
        return False
    for k, want in (m.properties or {}).items():
        if k not in e.properties or e.properties[k] != want:
            return False
    for k, part in (m.properties_contains or {}).items():
        if k not in e.properties or part.lower() not in str(e.properties[k]).lower():
            return False
    if m.url is not None and not fnmatch.fnmatchcase(e.url.lower(), m.url.lower()):
        return False
    if m.url_regex is not None and re.search(m.url_regex, e.url, re.IGNORECASE) is None:
        return False
    return all(str(e.utm.get(k, "")).lower() == want.lower() for k, want in (m.utm or {}).items())


# -- one lead --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Lead:
    stage: str = "visitor"
    hot: bool = False
    fit: float = 0.0
    engagement: float = 0.0
    product: float = 0.0
    as_of: int | None = None  # event time the scores are decayed up to
    last_event: int | None = None  # the newest event time: idleness starts after it
    traits: dict[str, tuple[Any, int]] = field(default_factory=dict)
    fit_rules: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    cap_used: dict[str, dict[int, int]] = field(default_factory=dict)  # rule -> window -> |pts|
    count_times: dict[str, list[int]] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)
    last_alert_at: int | None = None
    alert_rules: list[str] = field(default_factory=list)
    last_alert: int | None = None  # index in `alerts` of the latest alert sent to a team
    moves: list[Move] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)

    def outcome(self) -> Outcome:
        return Outcome(self.stage, self.hot, self.fit, self.engagement, self.product,
                       tuple(self.moves), tuple(self.alerts), tuple(self.routes))


class ReferenceModel:
    """Feed it the steps of a trace in arrival order; read each lead's `Outcome`."""

    def __init__(self, rules: CompiledRules) -> None:
        md = rules.model
        self.free = frozenset(d.lower() for d in md.free_email_domains)
        rs: list[_EventRule] = [
            _EventRule(r.id, "engagement", r.points, r.match, r.cap, None, r.trigger, False)
            for r in md.engagement]
        rs += [_EventRule(r.id, "product", r.points, r.match, r.cap, r.count, r.trigger, False)
               for r in md.product]
        rs += [_EventRule(r.id, "engagement", r.points, r.match, r.cap, None, None, r.disqualify)
               for r in md.negative if r.match is not None]
        self.event_rules = tuple(rs)
        self.trait_rules = tuple(
            [_TraitRule(r.id, r.points, r.when, False) for r in md.fit]
            + [_TraitRule(r.id, r.points, r.when, r.disqualify)
               for r in md.negative if r.when is not None])
        g = md.groups
        self.groups = {"fit": g.fit, "engagement": g.engagement, "product": g.product}
        th = md.thresholds
        self.mql, self.hot_line, self.recycle, self.pql = th.mql, th.hot, th.recycle, th.pql
        self.cool = th.hot - 10 if th.cool_below is None else th.cool_below
        self.cooldown = md.alerts.cooldown
        self.require = md.alerts.require
        self.sql_requires = tuple(md.qualification.sql_requires)
        self.decay = md.decay
        self.leads: dict[str, _Lead] = {}

    # -- public --------------------------------------------------------------------------

    def feed(self, steps: Iterable[Step]) -> None:
        for s in steps:
            lead = self.leads.setdefault(s.lead_id, _Lead())
            if isinstance(s, Tick):
                self._tick(lead, s.now_ms)
            else:
                self._event(lead, s)

    def outcome(self, lead_id: str) -> Outcome:
        return self.leads.setdefault(lead_id, _Lead()).outcome()

    # -- scores --------------------------------------------------------------------------

    def _part(self, group: str, v: float) -> float:
        g = self.groups[group]
        return g.weight * (v if g.max is None else min(v, g.max))

    def total(self, ld: _Lead) -> float:
        return self._part("fit", ld.fit) + self.activity(ld)

    def activity(self, ld: _Lead) -> float:
        return self._part("engagement", ld.engagement) + self._part("product", ld.product)

    def _faded(self, v: float, idle_from: int, idle_to: int) -> float:
        """`v` after the idle time between `idle_from` and `idle_to` (ms since idleness began)."""
        d = self.decay
        if d is None or v <= 0 or idle_to <= idle_from:
            return v  # decay never raises a score: a negative one stays put
        if d.half_life is not None:
            return float(v * 0.5 ** ((idle_to - idle_from) / d.half_life))
        assert d.points_per_period is not None
        per = d.points_per_period
        periods = idle_to // per.period - idle_from // per.period  # whole periods of idleness
        return max(0.0, v - periods * per.points)

    def _decays(self, group: str) -> bool:
        return self.decay is not None and group in self.decay.groups

    def _decay_until(self, ld: _Lead, t: int) -> bool:
        """Decay the scores up to event time t; True if some idle time passed."""
        assert ld.as_of is not None and ld.last_event is not None and self.decay is not None
        idle_since = ld.last_event + self.decay.idle_after
        start = max(ld.as_of, idle_since)
        if t <= start:
            return False
        if self._decays("engagement"):
            ld.engagement = self._faded(ld.engagement, start - idle_since, t - idle_since)
        if self._decays("product"):
            ld.product = self._faded(ld.product, start - idle_since, t - idle_since)
        return True

    def _after_idle(self, ld: _Lead, t: int, mid: str | None) -> None:
        """Idle time passed: an MQL/PQL whose activity decayed below the line is recycled;
        a hot lead whose total is below the cooling line cools."""
        if ld.stage in _MARKETING and self.activity(ld) < self.recycle:
            self._move(ld, "recycled", "decay", "decay", mid)
        if ld.hot and self.total(ld) < self.cool:
            ld.hot = False

    # -- moves, alerts -------------------------------------------------------------------

    def _move(self, ld: _Lead, to: str, cause: str, rule: str, mid: str | None) -> bool:
        if ld.stage == to or ld.stage not in _FROM[cause].get(to, frozenset()):
            return False
        ld.moves.append(Move(ld.stage, to, rule, mid))
        ld.stage = to
        if to in ("recycled", "customer", "disqualified"):
            ld.hot = False
        if to == "recycled":
            ld.routes.append(Route("recycle", mid, None))
        return True

    def _meets(self, ld: _Lead, req: Requirement | None) -> bool:
        if req is None:
            return True
        if any(r in ld.fit_rules for r in req.none_of):
            return False
        if req.min_fit is not None and ld.fit < req.min_fit:
            return False
        plain = {k: v for k, (v, _t) in ld.traits.items()}
        return all(_holds(c, plain, self.free) for c in req.traits)

    def _eligible(self, ld: _Lead, own: Requirement | None) -> bool:
        return self._meets(ld, self.require) and self._meets(ld, own)

    def _alert(self, ld: _Lead, kind: str, rule: str, t: int, mid: str | None,
               own: Requirement | None = None) -> bool:
        """Raise an alert (or send to review); False when the stage or the cooldown stops it."""
        if ld.stage not in _ALERTED_IN:
            return False
        updates: int | None = None
        if ld.last_alert_at is not None and abs(t - ld.last_alert_at) < self.cooldown:
            # within the cooldown only a hand-raise by a rule not yet alerted is news
            if kind != "instant" or rule in ld.alert_rules:
                return False
            ld.alert_rules.append(rule)
            updates = ld.last_alert
        else:
            ld.alert_rules = [rule]
            ld.last_alert_at = t
        if not self._eligible(ld, own):
            # one review per event: a hand-raise reviewed by `_lines` keeps its hand-off
            if not any(x.route == "review" and x.message_id == mid for x in ld.routes):
                ld.routes.append(Route("review", mid, rule))
            return True
        ld.alerts.append(Alert(kind, rule, mid, updates))
        ld.last_alert = len(ld.alerts) - 1
        return True

    # -- one step ------------------------------------------------------------------------

    def _tick(self, ld: _Lead, now: int) -> None:
        if self.decay is None or ld.as_of is None or now <= ld.as_of:
            return
        before = (ld.engagement, ld.product, ld.hot, len(ld.moves), ld.as_of)
        idle = self._decay_until(ld, now)
        ld.as_of = now
        if idle:
            self._after_idle(ld, now, None)
        if (ld.engagement, ld.product, ld.hot, len(ld.moves)) == before[:4]:
            # a tick that changes nothing leaves the lead as it was, its scores' time too
            # (the decay timer keeps only ticks that move or cool a lead)
            ld.as_of = before[4]

    def _event(self, ld: _Lead, e: Event) -> None:
        mid, t = e.message_id, e.timestamp_ms
        if mid in ld.seen:
            return
        ld.seen.add(mid)
        late = idle = False
        if ld.as_of is None or ld.last_event is None:
            ld.as_of = ld.last_event = t
        else:
            if t > ld.as_of:
                if self.decay is not None:
                    idle = self._decay_until(ld, t)
                ld.as_of = t
            elif t < ld.as_of:
                late = True
            ld.last_event = max(ld.last_event, t)
        total0, product0 = self.total(ld), ld.product  # after decay, before this event
        if idle:
            self._after_idle(ld, t, mid)
        if ld.stage == "visitor" and (e.user_id or "email" in e.traits):
            self._move(ld, "lead", "identified", "identified", mid)
        if e.type == "track" and e.name in _CRM:
            self._crm(ld, e)
        elif e.type in ("identify", "group") and e.traits:
            self._merge_traits(ld, e)

        matched = [r for r in self.event_rules if _matches(r.match, e)]
        for r in matched:
            pts = self._points(ld, r, t, late)
            if r.group == "engagement":
                ld.engagement += pts
            else:
                ld.product += pts
        dq = next((r for r in matched if r.disqualify), None)
        if dq is not None and ld.stage != "disqualified":
            self._move(ld, "disqualified", "disqualify", dq.id, mid)
        trigger = next((r for r in matched if r.trigger is not None), None)
        self._lines(ld, e, trigger, total0, product0)

    def _crm(self, ld: _Lead, e: Event) -> None:
        target = _CRM[e.name]
        if target is None:
            return
        if target == "sql" and ld.stage != "sql" and any(
                e.properties.get(k) in (None, "", False) for k in self.sql_requires):
            return  # the qualification criteria are missing: refused
        self._move(ld, target, "crm", f"crm:{e.name}", e.message_id)

    def _merge_traits(self, ld: _Lead, e: Event) -> None:
        for k, v in e.traits.items():
            old = ld.traits.get(k)
            if old is None or e.timestamp_ms > old[1]:
                ld.traits[k] = (v, e.timestamp_ms)
        plain = {k: v for k, (v, _t) in ld.traits.items()}
        holding = [r for r in self.trait_rules if _holds(r.when, plain, self.free)]
        ld.fit = float(sum(r.points for r in holding))
        ld.fit_rules = {r.id for r in holding}
        dq = next((r for r in holding if r.disqualify), None)
        if dq is not None and ld.stage != "disqualified":
            self._move(ld, "disqualified", "disqualify", dq.id, e.message_id)

    def _points(self, ld: _Lead, r: _EventRule, t: int, late: bool) -> float:
        """The points rule r gives an event at time t (counts, caps, a late event's decay)."""
        pts = float(r.points)
        if r.count is not None:
            if r.id in ld.counted:
                return 0.0
            n, within = r.count.at_least, r.count.within
            history = ld.count_times.setdefault(r.id, [])
            # the newest times remembered (documented bound), and this one
            times = sorted([*sorted(history)[-max(MAX_COUNT_TIMES, n - 1):], t])
            history.append(t)
            if not any(times[i + n - 1] - times[i] <= within
                       for i in range(len(times) - n + 1)):
                return 0.0
            ld.counted.add(r.id)
        elif r.cap is not None:
            window = t // r.cap.window
            used = ld.cap_used.setdefault(r.id, {})
            known = sorted(used)[-MAX_CAP_WINDOWS:]
            if window not in known and len(known) == MAX_CAP_WINDOWS and window < known[0]:
                return 0.0  # older than every window remembered: its total is unknown
            room = r.cap.points - used.get(window, 0)
            if room <= 0:
                return 0.0
            given = min(abs(r.points), room)
            used[window] = used.get(window, 0) + given
            pts = float(given if r.points > 0 else -given)
        if late and pts > 0 and self._decays(r.group):
            assert ld.as_of is not None and self.decay is not None
            pts = self._faded(pts, 0, ld.as_of - (t + self.decay.idle_after))
        return pts

    def _lines(self, ld: _Lead, e: Event, trigger: _EventRule | None, total0: float,
               product0: float) -> None:
        """Instant triggers, then the mql, pql and hot lines, then nurture."""
        t, mid = e.timestamp_ms, e.message_id
        to_mql = alerted = False
        if trigger is not None and trigger.trigger is not None:
            tr = trigger.trigger
            # a disqualified lead's hand-raise, or one failing the requirements: a person
            # reviews it, with no stage move and no hot flag
            if ld.stage == "disqualified" or (
                    ld.stage in _ALERTED_IN and not self._eligible(ld, tr.require)):
                ld.routes.append(Route("review", mid, trigger.id))
            else:
                if tr.stage is not None and self._move(ld, tr.stage, "trigger", trigger.id, mid):
                    to_mql = tr.stage == "mql"
                    if tr.stage == "pql":
                        alerted = self._alert(ld, "pql", trigger.id, t, mid, tr.require)
                if tr.hot and ld.stage in _ALERTED_IN:
                    ld.hot = True
                    alerted = self._alert(ld, "instant", trigger.id, t, mid, tr.require) or alerted
        total = self.total(ld)
        if (ld.stage == "lead" and total >= self.mql) or total0 < self.mql <= total:
            to_mql = self._move(ld, "mql", "score", "mql_threshold", mid) or to_mql
        if ((ld.product >= self.pql and ld.stage in ("lead", "mql"))
                or product0 < self.pql <= ld.product) and self._move(
                    ld, "pql", "product", "pql_threshold", mid):
            alerted = self._alert(ld, "pql", "pql_threshold", t, mid) or alerted
        if total >= self.hot_line:
            if not ld.hot and ld.stage in _ALERTED_IN:
                ld.hot = True
                alerted = self._alert(ld, "hot_score", "hot_threshold", t, mid) or alerted
        elif ld.hot and total0 >= self.cool > total:
            ld.hot = False  # lost points took it below the cooling line
        if to_mql and not alerted and not ld.hot:
            ld.routes.append(Route("nurture", mid, None))
