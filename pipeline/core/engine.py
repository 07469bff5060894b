"""The scoring engine: (state, event, rules) -> (new state, outputs). Pure and deterministic.

Per event, in order: dedup by message id; decay the decaying groups up to the event's
time; add the event's marketing touch to the journey; recycle an MQL/PQL that decayed
below the recycle line; identify a visitor; merge traits and recompute fit; apply a CRM
move (or an unsubscribe); score the matching rules (caps, counts); then instant triggers,
the mql/pql lines and the hot line, alerts (with cooldown) and routing decisions. Every
move marks the journey's latest touch, a move to mql, sql, opportunity or customer is
attributed (`Attribution`), and moves, alerts and unsubscribes start or stop nurture
(`NurtureChange`).

Score ledger: asked for it (`ledger=True`), the engine also emits a `ScoreChange` per
(event, rule) that changed a score, per trait rule whose points fit gained or lost, and per
group that decay lowered, and keeps the last `MAX_CHANGES` of them in the state. Off, none
is built: the only cost left is one test per scoring rule.

Order and idempotence:
- The same message id is counted once (the last `MAX_SEEN` ids; the shell dedups longer).
- Scores are order-independent when no decay happens between the events: caps use
  tumbling windows aligned to the epoch (points per window = min(cap, sum)), counted
  product rules look at event times, and fit uses the latest trait values by event time.
- Decay is computed from event time only. A late event (older than the lead's newest)
  has its own points decayed as if the lead had been idle since it; that is exact when no
  other event lies between, an approximation otherwise. An event older than the last
  `MAX_CAP_WINDOWS` windows of a capped rule scores 0 for that rule (its window's total
  is no longer known, and a cap must never be exceeded). A counted rule remembers its last
  `MAX_COUNT_TIMES` event times (at least `at_least - 1`), so a late event is counted with
  any of those, as it would have been in time order.
- Stage moves, alerts and routing decisions happen when an event arrives, so they depend
  on arrival order (a late event may cross a line at its arrival, not at its time); so
  does the journey, whose touches are kept in arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.attribution import deal_amount, weights
from pipeline.core.breakdown import top_reasons
from pipeline.core.event import Event
from pipeline.core.outputs import (
    ATTRIBUTED_STAGES,
    AlertKind,
    AlertTrigger,
    Attribution,
    ChangeKind,
    MoveRefused,
    NurtureChange,
    NurtureReason,
    Output,
    RoutingDecision,
    ScoreChange,
    StageMove,
    Temperature,
    make_change,
)
from pipeline.core.rules import (
    ENGAGEMENT,
    GROUP_NAMES,
    CompiledDecay,
    CompiledEventRule,
    CompiledRequirement,
    CompiledRules,
)
from pipeline.core.stages import (
    ALERTABLE,
    CRM,
    CRM_EVENTS,
    DECAY,
    DECAYS_TO_RECYCLED,
    DISQUALIFY,
    IDENTIFIED,
    PRODUCT,
    SCORE,
    TRIGGER,
    UNSUBSCRIBED,
    decide,
)
from pipeline.core.state import (
    MAX_CAP_WINDOWS,
    MAX_CHANGES,
    MAX_COUNT_TIMES,
    MAX_RECENT,
    MAX_SEEN,
    LeadState,
    make_state,
)
from pipeline.core.touches import add, extract, mark_last


@dataclass(frozen=True, slots=True)
class Result:
    """The new state and the outputs to emit, in order."""

    state: LeadState
    outputs: tuple[Output, ...]


_set_state, _set_outputs = (getattr(Result, n).__set__ for n in ("state", "outputs"))


def _result(state: LeadState, outputs: tuple[Output, ...]) -> Result:
    """`Result(state, outputs)` through the slot setters (see `make_state`): once per call."""
    res = object.__new__(Result)
    _set_state(res, state)
    _set_outputs(res, outputs)
    return res


class _Work:
    """A mutable copy of a LeadState for the length of one call.

    The mapping fields still share the caller's (read-only) dicts; `_run` copies the ones it
    writes once per call, so a LeadState is never changed after it is made.
    """

    __slots__ = ("achieved", "alert_rules", "caps", "changes", "contrib", "counts",
                 "engagement", "first_event_ms", "fit", "fit_hits", "fit_rules", "hot",
                 "last_alert_id", "last_alert_ms", "last_event_ms", "lead_id", "ledger",
                 "nurture", "opportunity", "opted_out", "outs", "owner", "product", "recent",
                 "rejection", "score_ms", "seen", "stage", "stage_since_ms", "team", "touches",
                 "traits")

    def __init__(self, s: LeadState, ledger: bool = False) -> None:
        self.lead_id = s.lead_id
        self.stage = s.stage
        self.stage_since_ms = s.stage_since_ms
        self.fit = s.fit
        self.engagement = s.engagement
        self.product = s.product
        self.score_ms = s.score_ms
        self.first_event_ms = s.first_event_ms
        self.last_event_ms = s.last_event_ms
        self.traits = s.traits
        self.fit_hits = s.fit_hits
        self.caps: Any = s.caps
        self.counts: Any = s.counts
        self.achieved = s.achieved
        self.seen: Any = s.seen
        self.contrib: Any = s.contributions
        self.recent = list(s.recent)
        self.hot = s.hot
        self.last_alert_ms = s.last_alert_ms
        self.alert_rules = s.alert_rules
        self.owner = s.owner
        self.team = s.team
        self.last_alert_id = s.last_alert_id
        self.rejection = s.rejection
        self.fit_rules = s.fit_rules
        self.touches = s.touches
        self.nurture = s.nurture
        self.opted_out = s.opted_out
        self.opportunity = s.opportunity
        self.outs: list[Output] = []
        self.ledger = ledger
        self.changes = s.changes

    def freeze(self) -> LeadState:
        return make_state(
            self.lead_id, self.stage, self.stage_since_ms, self.fit, self.engagement,
            self.product, self.score_ms, self.first_event_ms, self.last_event_ms, self.traits,
            self.fit_hits, self.caps, self.counts, self.achieved, self.seen, self.contrib,
            tuple(self.recent[-MAX_RECENT:]), self.hot, self.last_alert_ms, self.alert_rules,
            self.owner, self.team, self.last_alert_id, self.rejection, self.fit_rules,
            self.touches, self.nurture, self.opted_out, self.kept_changes(), self.opportunity,
        )

    def kept_changes(self) -> tuple[ScoreChange, ...]:
        """The state's changes and this call's, the last MAX_CHANGES."""
        if not self.ledger:
            return self.changes
        new = [o for o in self.outs if isinstance(o, ScoreChange)]
        return (*self.changes, *new)[-MAX_CHANGES:] if new else self.changes

    def change(self, r: CompiledRules, kind: ChangeKind, rule: str, group: str, delta: float,
               at: int, mid: str | None) -> None:
        """Record a score change, scores as they are on `self` now."""
        fit, eng, prod = self.fit, self.engagement, self.product
        self.outs.append(make_change(self.lead_id, kind, rule, group, delta, fit, eng, prod,
                                     r.total(fit, eng, prod), at, mid))

    def decay_changes(self, r: CompiledRules, eng0: float, prod0: float, at: int,
                      mid: str | None) -> None:
        """Decay as changes of its own: one per group it lowered."""
        e1, p1 = self.engagement, self.product
        if e1 != eng0:
            self.engagement, self.product = e1, prod0  # scores after this step alone
            self.change(r, "decay", "decay", "engagement", e1 - eng0, at, mid)
            self.product = p1
        if p1 != prod0:
            self.change(r, "decay", "decay", "product", p1 - prod0, at, mid)

    def groups(self) -> dict[str, float]:
        return {"fit": round(self.fit, 2), "engagement": round(self.engagement, 2),
                "product": round(self.product, 2)}


# -- decay ---------------------------------------------------------------------------------


def _decayed(v: float, start: int, end: int, anchor: int, d: CompiledDecay) -> float:
    """`v` after idle time [start, end] (start >= anchor, the start of idleness).

    Exponential decay composes exactly; linear decay counts whole periods from `anchor`,
    so that decaying in several steps equals decaying once. Never raises a score.
    """
    if v <= 0.0 or end <= start:
        return v
    if d.half_life_ms:
        return float(v * 0.5 ** ((end - start) / d.half_life_ms))
    n = (end - anchor) // d.period_ms - (start - anchor) // d.period_ms
    return max(0.0, v - n * d.period_points) if n > 0 else v


def _decay_to(w: _Work, t: int, d: CompiledDecay) -> bool:
    """Decay the decaying groups from w.score_ms up to event time t; True if idle time passed."""
    assert w.last_event_ms is not None and w.score_ms is not None
    anchor = w.last_event_ms + d.idle_after_ms
    start = w.score_ms if w.score_ms > anchor else anchor
    if t <= start:
        return False
    if d.engagement:
        w.engagement = _decayed(w.engagement, start, t, anchor, d)
    if d.product:
        w.product = _decayed(w.product, start, t, anchor, d)
    return True


# -- nurture -------------------------------------------------------------------------------

# A move to one of these stages takes the lead out of nurture: sales works it, or nobody does.
_EXIT_ON: dict[str, NurtureReason] = {
    "sal": "sales_accepted", "sql": "qualified", "opportunity": "opportunity_opened",
    "customer": "customer", "disqualified": "disqualified"}


def _enroll(w: _Work, reason: NurtureReason, at: int, mid: str | None,
            detail: str | None = None) -> None:
    """Put the lead in nurture, unless it is already there or unsubscribed."""
    if w.nurture is None and not w.opted_out:
        w.nurture = reason
        # what the lead cared about most, by the rules' points: a track to pick
        top = max(((c[0], rid) for rid, c in w.contrib.items() if c[0] > 0), default=None)
        w.outs.append(NurtureChange(w.lead_id, "enroll", reason, w.stage, at, mid, detail,
                                    top[1] if top else None))


def _exit(w: _Work, reason: NurtureReason, at: int, mid: str | None,
          detail: str | None = None) -> None:
    """Take the lead out of nurture, if it is there."""
    if w.nurture is not None:
        w.nurture = None
        w.outs.append(NurtureChange(w.lead_id, "exit", reason, w.stage, at, mid, detail))


# -- moves, alerts -------------------------------------------------------------------------


def _move(w: _Work, r: CompiledRules, to: str, cause: str, rule: str, at: int,
          mid: str | None, detail: str | None = None,
          deal: tuple[float | None, str | None, str | None] = (None, None, None)) -> bool:
    """Ask for a move; apply it and emit StageMove, or emit MoveRefused when reportable.

    A move marks the lead's latest touch as the one before it, and a move to an attributed
    stage emits its Attribution (with `deal`: amount, currency, issue) after the StageMove.
    """
    ok, reason = decide(w.stage, to, cause)
    if not ok:
        if reason is not None:
            w.outs.append(MoveRefused(w.lead_id, w.stage, to, at, reason, mid))
        return False
    total = round(r.total(w.fit, w.engagement, w.product), 2)
    w.outs.append(StageMove(w.lead_id, w.stage, to, at, rule, mid, total, w.groups(), detail))
    if w.touches:
        w.touches = mark_last(w.touches, to)
    if to in ATTRIBUTED_STAGES:
        j = w.touches
        w.outs.append(Attribution(
            w.lead_id, to, w.stage, at, rule, mid, j,
            tuple([(m, weights(m, j)) for m in r.attribution_models]), *deal))
    w.stage = to
    w.stage_since_ms = at
    if to == "recycled" or to == "customer" or to == "disqualified":
        w.hot = False
    if to == "recycled":
        w.outs.append(RoutingDecision(w.lead_id, "recycle", "cold", at, f"{cause}:{rule}", mid,
                                      total, w.groups()))
        _enroll(w, "recycled", at, mid, rule)
    elif to in _EXIT_ON:
        _exit(w, _EXIT_ON[to], at, mid, rule)
    return True


def _temperature(w: _Work, r: CompiledRules, total: float) -> Temperature:
    if w.hot or total >= r.hot:
        return "hot"
    return "warm" if total >= r.mql else "cold"


def _plain_traits(w: _Work) -> dict[str, Any]:
    return {k: v for k, (v, _ts) in w.traits.items()}


def _gate(w: _Work, r: CompiledRules, own: CompiledRequirement | None) -> str | None:
    """Why this lead's alert may not reach a team (alerts.require, then the trigger's own)."""
    reqs = [req for req in (r.alert_require, own) if req is not None]
    if not reqs:
        return None
    traits = _plain_traits(w)
    return next((why for req in reqs
                 if (why := req.failure(w.fit, w.fit_hits, traits)) is not None), None)


def _review(w: _Work, r: CompiledRules, rule: str, why: str, at: int, mid: str | None) -> None:
    """Send a lead that asked for sales but fails the requirements to the review queue.

    One hand-off per event (its id is the event's): a hand-raise that also crosses the hot
    line is reviewed once, for the hand-raise, as it would be alerted once.
    """
    if any(type(o) is RoutingDecision and o.route == "review" and o.message_id == mid
           and o.at_ms == at for o in w.outs):
        return
    total = r.total(w.fit, w.engagement, w.product)
    w.outs.append(RoutingDecision(w.lead_id, "review", _temperature(w, r, total), at, why, mid,
                                  round(total, 2), w.groups(), rule))


def _alert(w: _Work, r: CompiledRules, kind: AlertKind, rule: str, at: int,
           mid: str | None, require: CompiledRequirement | None = None) -> bool:
    """Emit an alert unless the stage takes none or the cooldown holds it back.

    A lead that fails the alert requirements goes to review instead (counted as its alert
    for the cooldown). A trigger inside the cooldown of an earlier alert updates that one.
    """
    if w.stage not in ALERTABLE:
        return False
    last = w.last_alert_ms
    updates: str | None = None
    if last is not None and abs(at - last) < r.cooldown_ms:
        # inside the cooldown only a trigger rule not yet alerted counts as news
        if kind != "instant" or rule in w.alert_rules:
            return False
        w.alert_rules = (*w.alert_rules, rule)
        updates = w.last_alert_id
    else:
        w.alert_rules = (rule,)
        w.last_alert_ms = at
    why = _gate(w, r, require)
    if why is not None:
        _review(w, r, rule, why, at, mid)
        return True
    total = r.total(w.fit, w.engagement, w.product)
    a = AlertTrigger(
        w.lead_id, kind, _temperature(w, r, total), at, rule, mid, round(total, 2), w.groups(),
        top_reasons(w.contrib, w.fit_hits), updates)
    w.last_alert_id = a.alert_id
    w.outs.append(a)
    _exit(w, "sales_alerted", at, mid, rule)  # a rep gets the lead: no nurture meanwhile
    return True


# -- scoring -------------------------------------------------------------------------------


def _recompute_fit(w: _Work, r: CompiledRules, at: int, mid: str | None) -> str | None:
    """Fit from the merged traits; the first disqualifying trait rule that holds, if any."""
    plain = _plain_traits(w)
    hit = [tr for tr in r.traits if tr.test(plain)]
    old = w.fit_hits
    w.fit_hits = tuple([(tr.id, tr.points) for tr in hit])
    fit = float(sum(tr.points for tr in hit))
    if w.ledger and w.fit_hits != old:
        _fit_changes(w, r, dict(old), dict(w.fit_hits), fit, at, mid)
    w.fit = fit
    return next((tr.id for tr in hit if tr.disqualify), None)


def _fit_changes(w: _Work, r: CompiledRules, old: dict[str, int], new: dict[str, int],
                 fit: float, at: int, mid: str | None) -> None:
    """One change per trait rule whose points the lead gained or lost, ending at `fit`."""
    for rid in (*old, *(k for k in new if k not in old)):
        delta = new.get(rid, 0) - old.get(rid, 0)
        if delta:
            w.fit += delta
            w.change(r, "fit", rid, "fit", float(delta), at, mid)
    w.fit = fit


def refit(w: _Work, r: CompiledRules, at: int, mid: str | None) -> None:
    """Fit from the stored traits when it was computed under other rules.

    Rules published while the workers run change fit on a lead's next touch (an event
    for it), not in a sweep over every stored lead: a sweep would rewrite the whole table
    and its changelog at once, and emit stage moves for leads nobody touched, at the
    worker's clock rather than at an event's time. Engagement and product keep their
    history: points already earned stay as they were earned.
    """
    if w.fit_rules == r.version:
        return
    w.fit_rules = r.version
    if w.traits:
        dq = _recompute_fit(w, r, at, mid)
        if dq is not None:
            _disqualify(w, r, dq, at, mid)


def _disqualify(w: _Work, r: CompiledRules, rule: str, at: int, mid: str | None) -> None:
    """A disqualifying rule holds: the lead leaves the funnel (refusals from closed stages)."""
    if w.stage != "disqualified":
        _move(w, r, "disqualified", DISQUALIFY, rule, at, mid)


def _crm(w: _Work, r: CompiledRules, e: Event) -> None:
    """A sales move from the CRM, with the criteria and reasons it carries."""
    name = e.name
    target = CRM_EVENTS[name]
    if target is None:
        return
    t, mid = e.timestamp_ms, e.message_id
    detail: str | None = None
    if target == "sql" and r.sql_requires and w.stage != "sql":
        missing = [k for k in r.sql_requires if e.properties.get(k) in (None, "", False)]
        if missing:
            w.outs.append(MoveRefused(
                w.lead_id, w.stage, "sql", t,
                f"{r.framework} criteria missing on {name!r}: {', '.join(missing)}", mid))
            return
    if name == "Lead Rejected":
        reason = e.properties.get("reason")
        detail = str(reason)[:200] if reason not in (None, "") else None
        if _move(w, r, target, CRM, f"crm:{name}", t, mid, detail):
            w.rejection = detail or "unspecified"
        return
    deal = deal_amount(e.properties) if target in ("opportunity", "customer") else (
        None, None, None)
    amount, currency, issue = deal
    if target == "customer" and amount is None and issue is None and w.opportunity:
        # a deal won without an amount is worth what its opportunity was
        deal = (*w.opportunity, None)
    if _move(w, r, target, CRM, f"crm:{name}", t, mid, detail, deal) and (
            target == "opportunity" and amount is not None):
        w.opportunity = (amount, currency)


def _idle(w: _Work, r: CompiledRules, eng: float, prod: float, total: float, t: int,
          mid: str | None) -> None:
    """After idle time decayed the lead: recycle by activity, cool a hot lead.

    Recycling reads activity (engagement and product), never fit: a perfect profile that
    stopped doing anything goes back to marketing. Only decay recycles: an MQL made by a
    trigger with few points stays until it has been idle.
    """
    w.engagement, w.product = eng, prod
    if w.stage in DECAYS_TO_RECYCLED and r.activity(eng, prod) < r.recycle:
        _move(w, r, "recycled", DECAY, "decay", t, mid)
    if w.hot and total < r.cool:
        w.hot = False


def _merge_traits(w: _Work, e: Event, r: CompiledRules) -> None:
    """Keep the latest value of each trait by event time (ties: the larger message id)."""
    t = e.timestamp_ms
    cur = w.traits
    changed: dict[str, tuple[Any, int]] | None = None
    for k, v in e.traits.items():
        old = cur.get(k)
        if old is None or t > old[1] or (t == old[1] and old[0] != v and _tie(v, old)):
            if changed is None:
                changed = dict(cur)
            changed[k] = (v, t)
    if changed is not None:
        w.traits = changed
        dq = _recompute_fit(w, r, t, e.message_id)
        if dq is not None:
            _disqualify(w, r, dq, t, e.message_id)


def _tie(v: Any, old: tuple[Any, int]) -> bool:
    # Two values with the same event time: pick deterministically, whatever the order.
    return repr(v) > repr(old[0])


def _count_reached(ts: list[int], n: int, within: int) -> bool:
    return any(ts[i + n - 1] - ts[i] <= within for i in range(len(ts) - n + 1))


def _award(w: _Work, cr: CompiledEventRule, t: int, late: bool, d: CompiledDecay | None) -> float:
    """Points this rule gives for an event at time t, after counts, caps and late decay.

    `w.caps` and `w.counts` must be dicts owned by the call (see `_run`); `w.score_ms` must
    be current (late decay reads it).
    """
    p = cr.points
    rid = cr.id
    if cr.count_at_least:
        if rid in w.achieved:
            return 0.0
        ts = sorted((*w.counts.get(rid, ()), t))
        if _count_reached(ts, cr.count_at_least, cr.count_within_ms):
            w.counts.pop(rid, None)
            w.achieved = w.achieved | {rid}
        else:
            # keep old times too, not only those within the window of the newest: a late
            # event may fall between them
            w.counts[rid] = tuple(ts[-max(MAX_COUNT_TIMES, cr.count_at_least - 1):])
            return 0.0
    elif cr.cap_points:
        win = t // cr.cap_window_ms
        wins: tuple[tuple[int, int], ...] = w.caps.get(rid, ())
        used = 0
        idx = -1
        if wins and wins[-1][0] == win:  # the common case: the newest window
            idx = len(wins) - 1
            used = wins[idx][1]
        else:
            for i, (wi, u) in enumerate(wins):
                if wi == win:
                    used, idx = u, i
                    break
        if idx < 0 and len(wins) >= MAX_CAP_WINDOWS and win < wins[0][0]:
            return 0.0  # older than what we remember: its window total is unknown
        room = cr.cap_points - used
        if room <= 0:
            return 0.0
        a = -p if p < 0 else p
        if a > room:
            a = room
        if idx == len(wins) - 1:
            new = (*wins[:idx], (win, used + a))
        elif idx >= 0:
            new = (*wins[:idx], (win, used + a), *wins[idx + 1:])
        else:
            new = tuple(sorted((*wins, (win, a))))[-MAX_CAP_WINDOWS:]
        w.caps[rid] = new
        p = a if p > 0 else -a
    pts = float(p)
    if late and pts > 0.0 and d is not None and w.score_ms is not None and (
            d.engagement if cr.group == ENGAGEMENT else d.product):
        anchor = t + d.idle_after_ms
        pts = _decayed(pts, anchor, w.score_ms, anchor, d)
    return pts


def _run(w: _Work, events: Iterable[Event], r: CompiledRules) -> None:
    """Score `events` in order into `w`: the hot loop of the core.

    Per event, in the order the module docstring gives. For speed (hundreds of thousands of
    events per second on one core) the loop keeps what every event reads or writes in
    local variables rather than on `w`: the three group scores, the event-time bookkeeping
    and the dicts it writes (dedup ids, caps, contributions, copied once per call instead of
    once per event). The rare steps (stage moves, alerts, trait merges, counted rules, late
    events, a cap's new window) stay in the helpers above, which work on `w`: before calling
    one, the loop stores the scores it holds back into `w` (`w.engagement`, `w.product`,
    `w.score_ms`). Fit only changes in `_merge_traits`, which sets `w.fit`.

    Two shortcuts, both exact: the total at the start of an event is the total at the end
    of the previous one unless decay ran in between (nothing else changes a score between
    events), and `_thresholds` is called only when one of its conditions can hold.
    tests/core/test_engine_reference.py checks the results against the plain version.
    """
    seen = w.seen = dict(w.seen)
    caps = w.caps = dict(w.caps)
    contrib = w.contrib = dict(w.contrib)
    w.counts = dict(w.counts)
    recent = w.recent
    match = r.match
    cache_get = r._cache.get  # the match cache, read directly (see below)
    d = r.decay
    mql, pql, hot_line, recycle, cool = r.mql, r.pql, r.hot, r.recycle, r.cool
    (wf, we, wp), (mf, me, mp) = r.weights, r.maxes
    fit, eng, prod = w.fit, w.engagement, w.product
    score_ms, last_ms, first_ms = w.score_ms, w.last_event_ms, w.first_event_ms
    # r.total(fit, eng, prod), written out (here and below) to save a call per event
    cur = (wf * (fit if fit < mf else mf) + we * (eng if eng < me else me)
           + wp * (prod if prod < mp else mp))
    channels = r.channels
    touch_cache = r._touch_cache
    ledger = w.ledger
    lead_id = w.lead_id

    for e in events:
        mid = e.message_id
        if mid in seen:
            continue  # the same message id is counted once
        t = e.timestamp_ms
        seen[mid] = t
        if len(seen) > MAX_SEEN:
            del seen[next(iter(seen))]

        late = False
        idle = False
        if score_ms is None or last_ms is None or first_ms is None:
            score_ms = last_ms = first_ms = t
            if w.stage_since_ms is None:
                w.stage_since_ms = t
        else:
            if t > score_ms:
                if d is not None:
                    # _decay_to, inlined: usually the lead was not idle and nothing decays
                    anchor = last_ms + d.idle_after_ms
                    start = score_ms if score_ms > anchor else anchor
                    if t > start:
                        idle = True
                        eng0, prod0 = eng, prod
                        if d.engagement:
                            eng = _decayed(eng, start, t, anchor, d)
                        if d.product:
                            prod = _decayed(prod, start, t, anchor, d)
                        if ledger and (eng != eng0 or prod != prod0):
                            w.engagement, w.product = eng, prod
                            w.decay_changes(r, eng0, prod0, t, mid)
                        cur = (wf * (fit if fit < mf else mf) + we * (eng if eng < me else me)
                               + wp * (prod if prod < mp else mp))
                score_ms = t
            elif t < score_ms:
                late = True
            if t > last_ms:
                last_ms = t
            if t < first_ms:
                first_ms = t

        # a touch first, so that a move this event makes is attributed to it too
        if channels and (e.utm or e.referrer or "utm_" in e.url
                         or (not w.touches and e.type == "page")):
            touch = extract(e, channels, not w.touches, touch_cache)
            if touch is not None:
                w.touches = add(w.touches, touch)

        stage0 = w.stage
        prev_total = cur
        if idle and ((w.hot and prev_total < cool) or (
                stage0 in DECAYS_TO_RECYCLED
                and we * (eng if eng < me else me) + wp * (prod if prod < mp else mp) < recycle)):
            _idle(w, r, eng, prod, prev_total, t, mid)
        if w.stage == "visitor" and (e.user_id or "email" in e.traits):
            w.engagement, w.product = eng, prod
            _move(w, r, "lead", IDENTIFIED, "identified", t, mid)

        prev_product = prod
        etype = e.type
        if etype == "track":
            name = e.name
            if name in CRM_EVENTS:
                w.engagement, w.product = eng, prod
                _crm(w, r, e)
            elif name == UNSUBSCRIBED:
                w.opted_out = True
                _exit(w, "unsubscribed", t, mid, UNSUBSCRIBED)
        elif e.traits and (etype == "identify" or etype == "group"):
            w.engagement, w.product = eng, prod
            _merge_traits(w, e, r)
            fit = w.fit

        # r.match(e), its cache lookup inlined: most events need no check beyond the cache
        hit = cache_get((etype, e.name, e.url))
        if hit is None:
            matched = match(e)
        else:
            matched = hit[0]
            for _cr, check in hit[1]:
                if check(e):
                    matched = match(e)  # a rule checked per event matches: merge in file order
                    break
        trig: CompiledEventRule | None = None
        dq: CompiledEventRule | None = None
        for cr in matched:
            if cr.disqualify and dq is None:
                dq = cr
            if cr.count_at_least or late:
                w.score_ms = score_ms
                pts = _award(w, cr, t, late, d)
            elif cr.cap_points:
                # _award's common cases inlined: the event falls in the rule's newest window,
                # or opens a newer one (windows are kept oldest first)
                rid = cr.id
                wins = caps.get(rid, ())
                win = t // cr.cap_window_ms
                if wins and wins[-1][0] == win:
                    used, opens = wins[-1][1], False
                elif not wins or win > wins[-1][0]:
                    used, opens = 0, True
                else:  # an older window: the general case
                    used, opens = -1, False
                if used < 0:
                    pts = _award(w, cr, t, False, d)
                elif used >= cr.cap_points:
                    pts = 0.0
                else:
                    p = cr.points
                    a = -p if p < 0 else p
                    room = cr.cap_points - used
                    if a > room:
                        a = room
                    if opens:
                        caps[rid] = (*wins, (win, a))[-MAX_CAP_WINDOWS:]
                    else:
                        caps[rid] = (*wins[:-1], (win, used + a))
                    pts = float(a if p > 0 else -a)
            else:
                pts = float(cr.points)
            if cr.trigger_stage is not None or cr.trigger_hot:
                if trig is None:
                    trig = cr
            elif pts == 0.0:
                continue
            if cr.group == ENGAGEMENT:
                eng += pts
            else:
                prod += pts
            # credit the rule: points, count, and the latest event by event time
            rid = cr.id
            c = contrib.get(rid)
            if c is None:
                contrib[rid] = (pts, 1, mid, t)
            elif t >= c[3]:
                contrib[rid] = (c[0] + pts, c[1] + 1, mid, t)
            else:
                contrib[rid] = (c[0] + pts, c[1] + 1, c[2], c[3])
            recent.append((rid, mid, pts, t))
            if ledger and pts != 0.0:  # w.change, inlined: one per rule hit
                w.outs.append(make_change(
                    lead_id, "event", rid, GROUP_NAMES[cr.group], pts, fit, eng, prod,
                    wf * (fit if fit < mf else mf) + we * (eng if eng < me else me)
                    + wp * (prod if prod < mp else mp), t, mid))

        total = cur = (wf * (fit if fit < mf else mf) + we * (eng if eng < me else me)
                       + wp * (prod if prod < mp else mp))
        if dq is not None:
            w.engagement, w.product = eng, prod
            _disqualify(w, r, dq.id, t, mid)
        if trig is None:
            if total == prev_total and prod == prev_product and w.stage == stage0:
                continue  # nothing changed: every line was already checked at these values
            # _thresholds does nothing unless a line is crossed or a hot flag must change
            stage = w.stage
            if not (prev_total < mql <= total or (stage == "lead" and total >= mql)
                    or prev_product < pql <= prod
                    or (prod >= pql and (stage == "lead" or stage == "mql"))
                    or (total >= hot_line and not w.hot and stage in ALERTABLE)
                    or (w.hot and prev_total >= cool > total)):
                continue
        w.engagement, w.product = eng, prod
        _thresholds(w, r, e, trig, prev_total, prev_product, total)

    w.engagement, w.product = eng, prod
    w.score_ms, w.last_event_ms, w.first_event_ms = score_ms, last_ms, first_ms


def _thresholds(w: _Work, r: CompiledRules, e: Event, trig: CompiledEventRule | None,
                prev_total: float, prev_product: float, total: float) -> None:
    t = e.timestamp_ms
    mid = e.message_id
    to_mql = False
    alerted = False
    if trig is not None and w.stage == "disqualified":
        # a hand-raise from a disqualified lead: a person decides, never an AE's SLA
        _review(w, r, trig.id, "lead is disqualified", t, mid)
        trig = None
    elif trig is not None and w.stage in ALERTABLE:
        why = _gate(w, r, trig.require)
        if why is not None:  # no stage move, no hot flag: the hand-raise waits for review
            _review(w, r, trig.id, why, t, mid)
            trig = None
    if trig is not None:
        if trig.trigger_stage is not None:
            before = w.stage
            if _move(w, r, trig.trigger_stage, TRIGGER, trig.id, t, mid):
                to_mql = trig.trigger_stage == "mql" and before != "mql"
                if trig.trigger_stage == "pql":
                    alerted = _alert(w, r, "pql", trig.id, t, mid, trig.require) or alerted
        if trig.trigger_hot and w.stage in ALERTABLE:
            w.hot = True
            alerted = _alert(w, r, "instant", trig.id, t, mid, trig.require) or alerted
    mql = r.mql
    if (w.stage == "lead" and total >= mql) or prev_total < mql <= total:
        before = w.stage
        if _move(w, r, "mql", SCORE, "mql_threshold", t, mid):
            to_mql = before != "mql"
    pql = r.pql
    product = w.product
    if ((product >= pql and w.stage in ("lead", "mql")) or prev_product < pql <= product) and (
            _move(w, r, "pql", PRODUCT, "pql_threshold", t, mid)):
        alerted = _alert(w, r, "pql", "pql_threshold", t, mid) or alerted
    if total >= r.hot:
        if not w.hot and w.stage in ALERTABLE:
            w.hot = True
            alerted = _alert(w, r, "hot_score", "hot_threshold", t, mid) or alerted
    elif w.hot and prev_total >= r.cool > total:
        # cooled by lost points; a hand-raise is hot whatever its score, until it drops
        # below the line or goes idle (`_idle`)
        w.hot = False
    if to_mql and not alerted and not w.hot:
        w.outs.append(RoutingDecision(w.lead_id, "nurture", "warm", t, "crossed mql", mid,
                                      round(total, 2), w.groups()))
        _enroll(w, "warm", t, mid, "crossed mql")


# -- public API ----------------------------------------------------------------------------


def new_state(lead_id: str) -> LeadState:
    """The state of a lead never seen before (an anonymous visitor)."""
    return LeadState(lead_id=lead_id)


def apply(state: LeadState | None, event: Event, rules: CompiledRules, *,
          ledger: bool = False) -> Result:
    """Score one event for one lead; `state` None means a lead never seen before.

    `ledger`: also emit (and keep in the state) a `ScoreChange` per score change.
    """
    if state is not None and event.message_id in state.seen:
        return Result(state, ())
    w = _Work(state if state is not None else LeadState(lead_id=event.lead_id), ledger)
    refit(w, rules, event.timestamp_ms, event.message_id)
    _run(w, (event,), rules)
    return _result(w.freeze(), tuple(w.outs))


def apply_batch(state: LeadState | None, events: Iterable[Event], rules: CompiledRules, *,
                ledger: bool = False) -> Result:
    """Score one lead's events in order: the same result as folding `apply`, cheaper."""
    if state is None:
        events = events if isinstance(events, list | tuple) else list(events)
        if not events:
            raise ValueError("apply_batch needs a state or at least one event")
        state = LeadState(lead_id=events[0].lead_id)
    w = _Work(state, ledger)
    if w.fit_rules != rules.version:
        events = events if isinstance(events, list | tuple) else list(events)
        if events:
            refit(w, rules, events[0].timestamp_ms, events[0].message_id)
    _run(w, events, rules)
    return _result(w.freeze(), tuple(w.outs))


def tick(state: LeadState, now_ms: int, rules: CompiledRules, *,
         ledger: bool = False) -> Result:
    """Time-driven moves for a quiet lead: decay up to `now_ms` (event time), maybe recycle.

    With `ledger`, the decay is emitted as changes without a message id.
    """
    d = rules.decay
    if d is None or state.score_ms is None or now_ms <= state.score_ms:
        return Result(state, ())
    w = _Work(state, ledger)
    idle = _decay_to(w, now_ms, d)
    w.score_ms = now_ms
    if ledger:
        w.decay_changes(rules, state.engagement, state.product, now_ms, None)
    if idle:
        _idle(w, rules, w.engagement, w.product,
              rules.total(w.fit, w.engagement, w.product), now_ms, None)
    if (w.engagement == state.engagement and w.product == state.product and not w.outs
            and w.hot == state.hot):
        return Result(state, ())
    return Result(w.freeze(), tuple(w.outs))


def scores(state: LeadState, rules: CompiledRules) -> Mapping[str, float]:
    """Group scores and the total of a state, rounded, for display."""
    return {**state.scores_by_group(),
            "total": round(rules.total(state.fit, state.engagement, state.product), 2)}
