"""The scoring engine's plain event-at-a-time loop: a test oracle for the optimised one.

`pipeline.core.engine._run` inlines decay, cap windows, the match cache and the score total
into one hot loop over local variables. This file is the same per-event order written
straightforwardly (`_step`), on the engine's own helpers for the rare paths (stage moves,
alerts, trait merges, caps and counts, idle checks, the threshold checks), so that
tests/core/test_engine_reference.py checks exactly the rewrite of the hot loop (a bug in a
helper passes there). What those helpers decide is checked by hand-derived cases in the
other tests of tests/core, and against the independent model of
tests/support/reference_model.py in tests/core/test_reference_model.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.core.engine import (
    Result,
    _award,
    _crm,
    _decay_to,
    _disqualify,
    _exit,
    _idle,
    _merge_traits,
    _move,
    _thresholds,
    _Work,
    refit,
    tick,
)
from pipeline.core.event import Event
from pipeline.core.rules import ENGAGEMENT, CompiledEventRule, CompiledRules
from pipeline.core.stages import CRM_EVENTS, DECAYS_TO_RECYCLED, IDENTIFIED, UNSUBSCRIBED
from pipeline.core.state import MAX_SEEN, LeadState
from pipeline.core.touches import add, extract

__all__ = ["apply", "apply_batch", "tick"]


def _own(w: _Work) -> None:
    # the helpers write these dicts in place: copies owned by this call
    w.seen, w.caps, w.counts, w.contrib = (dict(w.seen), dict(w.caps), dict(w.counts),
                                           dict(w.contrib))


def _step(w: _Work, e: Event, r: CompiledRules) -> None:
    mid = e.message_id
    if mid in w.seen:
        return
    t = e.timestamp_ms
    w.seen[mid] = t
    if len(w.seen) > MAX_SEEN:
        del w.seen[next(iter(w.seen))]

    late = False
    idle = False
    d = r.decay
    if w.score_ms is None or w.last_event_ms is None or w.first_event_ms is None:
        w.score_ms = w.last_event_ms = w.first_event_ms = t
        if w.stage_since_ms is None:
            w.stage_since_ms = t
    else:
        if t > w.score_ms:
            if d is not None:
                idle = _decay_to(w, t, d)
            w.score_ms = t
        elif t < w.score_ms:
            late = True
        if t > w.last_event_ms:
            w.last_event_ms = t
        if t < w.first_event_ms:
            w.first_event_ms = t

    touch = extract(e, r.channels, not w.touches) if r.channels else None
    if touch is not None:
        w.touches = add(w.touches, touch)

    stage0 = w.stage
    prev_total = r.total(w.fit, w.engagement, w.product)
    if idle and ((w.hot and prev_total < r.cool) or (
            stage0 in DECAYS_TO_RECYCLED and r.activity(w.engagement, w.product) < r.recycle)):
        _idle(w, r, w.engagement, w.product, prev_total, t, mid)
    if w.stage == "visitor" and (e.user_id or "email" in e.traits):
        _move(w, r, "lead", IDENTIFIED, "identified", t, mid)

    prev_product = w.product
    if e.type == "track":
        if e.name in CRM_EVENTS:
            _crm(w, r, e)
        elif e.name == UNSUBSCRIBED:
            w.opted_out = True
            _exit(w, "unsubscribed", t, mid, UNSUBSCRIBED)
    elif e.traits and e.type in ("identify", "group"):
        _merge_traits(w, e, r)

    trig: CompiledEventRule | None = None
    dq: CompiledEventRule | None = None
    for cr in r.match(e):
        if cr.disqualify and dq is None:
            dq = cr
        if cr.cap_points or cr.count_at_least or late:
            pts = _award(w, cr, t, late, d)
        else:
            pts = float(cr.points)
        if cr.trigger_stage is not None or cr.trigger_hot:
            if trig is None:
                trig = cr
        elif pts == 0.0:
            continue
        if cr.group == ENGAGEMENT:
            w.engagement += pts
        else:
            w.product += pts
        c = w.contrib.get(cr.id)
        if c is None:
            w.contrib[cr.id] = (pts, 1, mid, t)
        elif t >= c[3]:
            w.contrib[cr.id] = (c[0] + pts, c[1] + 1, mid, t)
        else:
            w.contrib[cr.id] = (c[0] + pts, c[1] + 1, c[2], c[3])
        w.recent.append((cr.id, mid, pts, t))

    if dq is not None:
        _disqualify(w, r, dq.id, t, mid)
    total = r.total(w.fit, w.engagement, w.product)
    if (trig is None and total == prev_total and w.product == prev_product
            and w.stage == stage0):
        return  # nothing changed: every line was already checked at these values
    # every line checked on every changed event (the engine skips those that cannot hold)
    _thresholds(w, r, e, trig, prev_total, prev_product, total)


def apply(state: LeadState | None, event: Event, rules: CompiledRules) -> Result:
    """Score one event for one lead; `state` None means a lead never seen before."""
    if state is not None and event.message_id in state.seen:
        return Result(state, ())
    w = _Work(state if state is not None else LeadState(lead_id=event.lead_id))
    _own(w)
    refit(w, rules, event.timestamp_ms, event.message_id)
    _step(w, event, rules)
    return Result(w.freeze(), tuple(w.outs))


def apply_batch(state: LeadState | None, events: Iterable[Event], rules: CompiledRules) -> Result:
    """Score one lead's events in order, one `_step` each."""
    w: _Work | None = None if state is None else _Work(state)
    if w is not None:
        _own(w)
    for e in events:
        if w is None:
            w = _Work(LeadState(lead_id=e.lead_id))
            _own(w)
        refit(w, rules, e.timestamp_ms, e.message_id)
        _step(w, e, rules)
    if w is None:
        raise ValueError("apply_batch needs a state or at least one event")
    return Result(w.freeze(), tuple(w.outs))
