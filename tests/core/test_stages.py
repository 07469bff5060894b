"""The lifecycle: each allowed move happens, refused moves are reported, not applied."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.core.engine import apply, apply_batch, tick
from pipeline.core.event import Event
from pipeline.core.outputs import MoveRefused, RoutingDecision, StageMove
from pipeline.core.rules import parse_rules
from pipeline.core.stages import ALLOWED, CRM, CRM_EVENTS, DECAY, SCORE, STAGES, decide, refusal
from pipeline.core.state import LeadState

DAY = 86_400_000
T0 = 1_767_225_600_000

R = parse_rules("""\
thresholds: {mql: 50, hot: 90, recycle: 20, pql: 40}
decay: {idle_after: 7d, half_life: 7d}
engagement:
  - {id: pricing, match: {type: page, url: "*/pricing*"}, points: 25}
  - {id: demo, match: {name: Demo Requested}, points: 10, trigger: {stage: mql, hot: true}}
  - {id: quote, match: {name: Quote Requested}, points: 10, trigger: {stage: sql}}
product:
  - {id: trial, match: {name: Trial Started}, points: 45}
""")

_n = 0


def ev(type_: str = "track", name: str = "", t: int = T0, **kw: Any) -> Event:
    global _n
    _n += 1
    kw.setdefault("user_id", "u")
    return Event(f"m{_n}", "u", type_, t, name=name, **kw)  # type: ignore[arg-type]


def at(stage: str, **kw: Any) -> LeadState:
    return LeadState(lead_id="u", stage=stage, score_ms=T0, first_event_ms=T0,
                     last_event_ms=T0, **kw)


def moves(outs: tuple[Any, ...]) -> list[tuple[str, str, str]]:
    return [(o.from_stage, o.to_stage, o.cause_rule) for o in outs if isinstance(o, StageMove)]


def refused(outs: tuple[Any, ...]) -> list[tuple[str, str]]:
    return [(o.from_stage, o.to_stage) for o in outs if isinstance(o, MoveRefused)]


def test_table_names_only_known_stages() -> None:
    for a, b in ALLOWED:
        assert a in STAGES and b in STAGES and a != b
    assert all(t is None or t in STAGES for t in CRM_EVENTS.values())
    assert refusal("customer", "mql", SCORE) == "no move from customer to mql"
    assert refusal("mql", "recycled", DECAY) is None
    assert decide("sql", "mql", SCORE) == (False, None)  # already past: not a refusal


def test_visitor_becomes_lead_when_identified() -> None:
    r = apply(None, ev("page", url="https://a.com/", user_id=None, anonymous_id="a"), R)
    assert r.state.stage == "visitor" and r.outputs == ()
    r = apply(r.state, ev("identify", t=T0 + 1, traits={"email": "x@y.com"}, user_id=None), R)
    assert moves(r.outputs) == [("visitor", "lead", "identified")]


def test_score_crossing_mql_then_nurture() -> None:
    res = apply_batch(at("lead"), [ev("page", url="https://a.com/pricing"),
                                   ev("page", t=T0 + 1, url="https://a.com/pricing")], R)
    assert moves(res.outputs) == [("lead", "mql", "mql_threshold")]
    nurture = [o for o in res.outputs if isinstance(o, RoutingDecision)]
    assert [(o.route, o.temperature) for o in nurture] == [("nurture", "warm")]


def test_anonymous_visitor_waits_then_moves_on_identification() -> None:
    res = apply_batch(None, [ev("page", url="https://a.com/pricing", user_id=None),
                             ev("page", t=T0 + 1, url="https://a.com/pricing", user_id=None)], R)
    assert res.state.stage == "visitor" and res.outputs == ()
    res = apply(res.state, ev("identify", t=T0 + 2, traits={"email": "a@b.com"}), R)
    assert moves(res.outputs) == [("visitor", "lead", "identified"),
                                  ("lead", "mql", "mql_threshold")]


def test_product_path_to_pql() -> None:
    res = apply(at("lead"), ev(name="Trial Started"), R)
    assert moves(res.outputs) == [("lead", "pql", "pql_threshold")]
    res = apply(at("mql", engagement=50.0), ev(name="Trial Started"), R)
    assert moves(res.outputs) == [("mql", "pql", "pql_threshold")]


@pytest.mark.parametrize(("stage", "event", "to"), [
    ("mql", "Lead Accepted", "sal"),
    ("pql", "Lead Accepted", "sal"),
    ("sal", "Lead Qualified", "sql"),
    ("mql", "Lead Qualified", "sql"),
    ("pql", "Lead Qualified", "sql"),
    ("sal", "Opportunity Created", "opportunity"),
    ("sql", "Opportunity Created", "opportunity"),
    ("pql", "Opportunity Created", "opportunity"),
    ("opportunity", "Deal Won", "customer"),
    ("opportunity", "Deal Lost", "recycled"),
    ("mql", "Lead Rejected", "recycled"),
    ("sal", "Lead Rejected", "recycled"),
    ("sql", "Lead Rejected", "recycled"),
    ("lead", "Lead Disqualified", "disqualified"),
    ("opportunity", "Lead Disqualified", "disqualified"),
])
def test_crm_moves(stage: str, event: str, to: str) -> None:
    res = apply(at(stage), ev(name=event), R)
    assert moves(res.outputs) == [(stage, to, f"crm:{event}")]
    assert res.state.stage == to
    assert (stage, to) in ALLOWED and CRM in ALLOWED[(stage, to)]
    recycle = [o.route for o in res.outputs if isinstance(o, RoutingDecision)]
    assert recycle == (["recycle"] if to == "recycled" else [])


@pytest.mark.parametrize(("stage", "event", "to"), [
    ("lead", "Lead Accepted", "sal"),  # no sal without an mql/pql candidate
    ("visitor", "Lead Accepted", "sal"),
    ("recycled", "Lead Accepted", "sal"),
    ("customer", "Deal Lost", "recycled"),
    ("lead", "Deal Won", "customer"),
    ("sal", "Deal Won", "customer"),
    ("customer", "Lead Disqualified", "disqualified"),
    ("disqualified", "Opportunity Created", "opportunity"),
    ("sql", "Lead Accepted", "sal"),  # no step back in the funnel
])
def test_refused_crm_moves_are_reported(stage: str, event: str, to: str) -> None:
    res = apply(at(stage), ev(name=event, user_id=None if stage == "visitor" else "u"), R)
    assert moves(res.outputs) == []
    assert refused(res.outputs) == [(stage, to)]
    assert res.state.stage == stage
    r = next(o for o in res.outputs if isinstance(o, MoveRefused))
    assert r.cause_message_id == f"m{_n}" and r.reason


def test_lead_contacted_is_no_move() -> None:
    res = apply(at("mql"), ev(name="Lead Contacted"), R)
    assert res.outputs == () and res.state.stage == "mql"


def test_trigger_mql_with_few_points_stays_until_idle() -> None:
    s = apply(at("lead"), ev(name="Demo Requested"), R).state
    assert s.stage == "mql" and s.engagement == 10
    assert apply(s, ev("page", t=T0 + DAY, url="https://a.com/"), R).state.stage == "mql"
    res = tick(s, T0 + 8 * DAY, R)
    assert moves(res.outputs) == [("mql", "recycled", "decay")]


def test_customer_does_not_jump_back_to_mql_on_a_page_view() -> None:
    res = apply_batch(at("customer"), [ev("page", url="https://a.com/pricing"),
                                       ev("page", t=T0 + 1, url="https://a.com/pricing")], R)
    assert res.state.stage == "customer"
    assert refused(res.outputs) == [("customer", "mql")]  # reported once, at the crossing
    res = apply(res.state, ev("page", t=T0 + 2, url="https://a.com/pricing"), R)
    assert res.outputs == ()


def test_trigger_moves_and_refusals() -> None:
    res = apply(at("lead"), ev(name="Demo Requested"), R)
    assert moves(res.outputs) == [("lead", "mql", "demo")]
    res = apply(at("mql"), ev(name="Quote Requested"), R)
    assert moves(res.outputs) == [("mql", "sql", "quote")]
    res = apply(at("sal"), ev(name="Demo Requested"), R)
    assert moves(res.outputs) == [] and refused(res.outputs) == []  # already past mql
    res = apply(at("customer"), ev(name="Quote Requested"), R)
    assert refused(res.outputs) == [("customer", "sql")]
    res = apply(None, ev(name="Demo Requested", user_id=None, anonymous_id="a"), R)
    assert refused(res.outputs) == [("visitor", "mql")]


def test_decay_below_recycle_line_recycles_on_tick_and_on_event() -> None:
    s = apply_batch(at("lead"), [ev("page", url="https://a.com/pricing"),
                                 ev("page", t=T0 + 1, url="https://a.com/pricing")], R).state
    assert s.stage == "mql" and s.engagement == 50
    quiet = tick(s, T0 + 10 * DAY, R)
    assert quiet.outputs == () and quiet.state.engagement == pytest.approx(50 * 0.5 ** (3 / 7))
    res = tick(quiet.state, T0 + 30 * DAY, R)
    assert moves(res.outputs) == [("mql", "recycled", "decay")]
    assert [(o.route, o.temperature) for o in res.outputs
            if isinstance(o, RoutingDecision)] == [("recycle", "cold")]
    assert tick(res.state, T0 + 30 * DAY, R).outputs == ()
    # the same by an event after months, then re-engagement brings it back (edge crossing)
    res = apply_batch(s, [ev("page", t=T0 + 60 * DAY, url="https://a.com/"),
                          ev("page", t=T0 + 60 * DAY + 1, url="https://a.com/pricing"),
                          ev("page", t=T0 + 60 * DAY + 2, url="https://a.com/pricing")], R)
    assert moves(res.outputs) == [("mql", "recycled", "decay"),
                                  ("recycled", "mql", "mql_threshold")]


def test_rejected_lead_is_not_requalified_by_its_old_score() -> None:
    s = apply_batch(at("mql", engagement=60.0), [ev(name="Lead Rejected")], R).state
    res = apply(s, ev("page", t=T0 + 1, url="https://a.com/"), R)
    assert s.stage == "recycled" and res.outputs == ()
