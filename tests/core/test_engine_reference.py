"""The optimised engine gives exactly the results of the straightforward reference engine.

`tests/support/reference_engine.py` is the engine as it was before its hot loop was rewritten
(one event at a time through a mutable copy of the state). Here both score the same random
event mixes, in random chunks, from states read back from `to_dict`, with ticks in between:
states and outputs must be equal, floats included (same operations in the same order).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import engine
from pipeline.core.event import Event
from pipeline.core.rules import (
    CompiledRules,
    default_rules_text,
    load_default_rules,
    parse_rules,
)
from pipeline.core.state import LeadState, make_state
from tests.support import reference_engine as ref

DAY = 86_400_000
T0 = 1_767_225_600_000

DEFAULT = load_default_rules()
# the shipped rules with linear decay instead of a half-life
DEFAULT_LINEAR = parse_rules(
    default_rules_text().replace("half_life: 30d", "")
    .replace("# or linear: points_per_period", "points_per_period"))
RICH = parse_rules("""\
groups: {fit: {max: 30}, engagement: {weight: 0.8, max: 60}, product: {weight: 1.5}}
thresholds: {mql: 40, hot: 70, recycle: 10, pql: 30}
alerts: {cooldown: 12h}
decay: {idle_after: 1d, half_life: 3d, groups: [engagement]}
fit:
  - {id: senior, when: {trait: title, contains_any: [vp, director]}, points: 15}
  - {id: size, when: {trait: company.employees, range: {min: 50}}, points: 10}
  - {id: biz, when: {free_email: false}, points: 5}
negative:
  - {id: student, when: {domain_endswith: [.edu]}, points: -20}
  - {id: unsub, match: {name: Unsubscribed}, points: -10, cap: {points: 10, window: 2d}}
  - {id: jobs, match: {type: page, url: "*/careers*"}, points: -5}
engagement:
  - {id: view, match: {type: page}, points: 1, cap: {points: 3, window: 1d}}
  - {id: pricing, match: {type: page, url: "*/pricing*"}, points: 10, cap: {points: 25, window: 2d}}
  - {id: cpc, match: {type: page, utm: {medium: cpc}}, points: 2}
  - {id: ebook, match: {name: Document Downloaded, properties: {kind: ebook}}, points: 5}
  - {id: any_track, match: {type: track}, points: 1, cap: {points: 2, window: 1d}}
  - {id: demo, match: {name: Demo Requested}, points: 20, trigger: {stage: mql, hot: true}}
  - {id: hot_only, match: {name: Webinar Attended}, points: 3, trigger: {hot: true}}
  - {id: to_sql, match: {name: Quote Requested}, points: 5, trigger: {stage: sql}}
product:
  - {id: trial, match: {name: Trial Started}, points: 20, cap: {points: 20, window: 52w}}
  - {id: invites, match: {name: Invite Sent}, count: {at_least: 2, within: 3d}, points: 15}
  - {id: limit, match: {name: Limit Reached}, points: 10, trigger: {stage: pql}}
""")
RULES = [DEFAULT, DEFAULT_LINEAR, RICH]

_URLS = ["https://a.com/", "https://a.com/blog/x", "https://a.com/pricing",
         "https://a.com/careers", "https://a.com/compare/rival", "https://a.com/customers/z",
         "https://a.com/?utm_source=google&utm_medium=cpc", "https://a.com/pricing?utm_medium=email"]
# touches: the default rules classify these referrers into channels
_REFERRERS = ["", "", "https://www.google.com/", "https://a.com/x", "https://news.example/"]
_TRACKS = ["Document Downloaded", "Demo Requested", "Trial Started", "Invite Sent",
           "Unsubscribed", "Email Opened", "Email Link Clicked", "Form Submitted",
           "Webinar Attended", "Quote Requested", "Limit Reached", "Feature Limit Reached",
           "Something Else", "Lead Accepted", "Lead Qualified", "Deal Won", "Deal Lost",
           "Lead Contacted", "Lead Disqualified", "Opportunity Created"]
_TRAITS: dict[str, list[Any]] = {
    "title": ["VP Ops", "Student", "Marketing Manager", "Intern", "Director IT", 7],
    "email": ["a@corp.com", "s@mit.edu", "x@gmail.com", "c@rivalcrm.example", ""],
    "employees": [5, 40, 80, 9000, "many", True],
    "company": [{"employees": 80}, {"employees": 3}, "acme"],
    "industry": ["software", "retail"],
    "country": ["US", "BR", "de"],
    "plan": ["free", "pro"],  # read by no rule: fit must not change
}


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(1, 40))
    span = draw(st.sampled_from([DAY, 20 * DAY, 200 * DAY]))
    out: list[Event] = []
    for i in range(n):
        if out and draw(st.integers(0, 9)) == 0:  # a replayed message
            out.append(draw(st.sampled_from(out)))
            continue
        t = T0 + draw(st.integers(0, span))
        user = draw(st.sampled_from([None, "u"]))
        kind = draw(st.integers(0, 9))
        mid = f"m{i}"
        if kind < 4:
            utm = draw(st.sampled_from([{}, {"medium": "CPC"}, {"source": "x"}]))
            out.append(Event(mid, "u", "page", t, url=draw(st.sampled_from(_URLS)), utm=utm,
                             user_id=user, referrer=draw(st.sampled_from(_REFERRERS))))
        elif kind < 8:
            props = draw(st.sampled_from([{}, {"kind": "ebook"}, {"form": "contact-sales"}]))
            out.append(Event(mid, "u", "track", t, name=draw(st.sampled_from(_TRACKS)),
                             source=draw(st.sampled_from(["web", "email", "product"])),
                             properties=props, user_id=user))
        else:
            keys = draw(st.lists(st.sampled_from(sorted(_TRAITS)), max_size=4, unique=True))
            traits = {k: draw(st.sampled_from(_TRAITS[k])) for k in keys}
            typ = draw(st.sampled_from(["identify", "group", "alias"]))
            out.append(Event(mid, "u", typ, t, traits=traits, user_id=user))  # type: ignore[arg-type]
    return out


def _run(mod: Any, evs: list[Event], rules: CompiledRules, cuts: list[int],
         ticks: list[int]) -> tuple[LeadState | None, list[Any]]:
    """Score in chunks; between chunks the state goes through to_dict and maybe a tick."""
    state: LeadState | None = None
    outs: list[Any] = []
    bounds = sorted({0, len(evs), *(c % (len(evs) + 1) for c in cuts)})
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        chunk = evs[a:b]
        if len(chunk) == 1 and k % 2:
            res = mod.apply(state, chunk[0], rules)
        else:
            res = mod.apply_batch(state, chunk, rules)
        outs += res.outputs
        state = LeadState.from_dict(res.state.to_dict())
        if k < len(ticks) and state.score_ms is not None:
            res = mod.tick(state, state.score_ms + ticks[k], rules)
            outs += res.outputs
            state = res.state
    return state, outs


@settings(max_examples=400, deadline=None)
@given(events(), st.sampled_from(RULES), st.lists(st.integers(0, 40), max_size=6),
       st.lists(st.integers(0, 30 * DAY), max_size=3))
def test_engine_equals_reference(evs: list[Event], rules: CompiledRules, cuts: list[int],
                                 ticks: list[int]) -> None:
    assert _run(engine, evs, rules, cuts, ticks) == _run(ref, evs, rules, cuts, ticks)


@settings(max_examples=200, deadline=None)
@given(events(), st.sampled_from(RULES))
def test_apply_equals_reference_event_by_event(evs: list[Event], rules: CompiledRules) -> None:
    a: LeadState | None = None
    b: LeadState | None = None
    for e in evs:
        ra, rb = engine.apply(a, e, rules), ref.apply(b, e, rules)
        assert (ra.state, ra.outputs) == (rb.state, rb.outputs)
        a, b = ra.state, rb.state


def test_benchmark_mix_equals_reference() -> None:
    # The benchmark's generated traffic (skewed leads, identify mid-stream), in the chunk
    # sizes the stream uses.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from core_bench import generate
    finally:
        sys.path.pop(0)
    for evs in generate(400, seed=3):
        for chunk in (1, 7, 20, 10**9):
            sa: LeadState | None = None
            sb: LeadState | None = None
            for k in range(0, len(evs), chunk):
                ra = engine.apply_batch(sa, evs[k:k + chunk], DEFAULT)
                rb = ref.apply_batch(sb, evs[k:k + chunk], DEFAULT)
                assert (ra.state, ra.outputs) == (rb.state, rb.outputs)
                sa, sb = ra.state, rb.state


def test_make_state_is_the_constructor() -> None:
    vals: dict[str, Any] = {
        "lead_id": "u", "stage": "mql", "stage_since_ms": 1, "fit": 2.0, "engagement": 3.5,
        "product": -1.0, "score_ms": 4, "first_event_ms": 5, "last_event_ms": 6,
        "traits": {"a": (1, 2)}, "fit_hits": (("r", 3),), "caps": {"c": ((1, 2),)},
        "counts": {"n": (1,)}, "achieved": frozenset({"n"}), "seen": {"m": 1},
        "contributions": {"c": (1.0, 1, "m", 1)}, "recent": (("c", "m", 1.0, 1),),
        "hot": True, "last_alert_ms": 7, "alert_rules": ("x",), "owner": "rep"}
    s = make_state(**vals)
    assert type(s) is LeadState and s == LeadState(**vals)
    assert LeadState.from_dict(s.to_dict()) == s
    with pytest.raises(FrozenInstanceError):
        s.stage = "sql"  # type: ignore[misc]


def test_trait_memo_keeps_values_of_other_types_apart() -> None:
    # 1, True, 1.0 and "1" are equal or alike as dict keys; the memo must not mix them up.
    r = parse_rules("thresholds: {mql: 40, hot: 70, recycle: 10, pql: 30}\n"
                    "fit: [{id: one, when: {trait: n, any_of: ['1']}, points: 5}]\n")
    (rule,) = r.traits
    for _ in range(2):  # the second round answers from the memo
        assert [rule.test({"n": v}) for v in (1, True, 1.0, "1", None)] == [
            True, False, False, True, False]
