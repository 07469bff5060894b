"""New rules re-evaluate fit from the stored traits on a lead's next touch; engagement stays."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.core.engine import apply, apply_batch
from pipeline.core.event import Event
from pipeline.core.outputs import StageMove
from pipeline.core.rules import CompiledRules, parse_rules
from pipeline.core.state import LeadState

T0 = 1_767_225_600_000
BASE = "thresholds: {mql: 60, hot: 90, recycle: 20, pql: 40}\n"
PAGE = "engagement: [{id: pricing, match: {type: page, url: '*/pricing*'}, points: 10}]\n"


def rules(title_points: int, extra: str = "") -> CompiledRules:
    return parse_rules(BASE + PAGE + "fit: [{id: vp, when: {trait: title, contains_any: [vp]}, "
                       f"points: {title_points}}}]\n{extra}")


def ev(mid: str, t: int, type_: str = "page", **kw: Any) -> Event:
    return Event(mid, "u", type_, t, user_id="u", **kw)  # type: ignore[arg-type]


def identified(r: CompiledRules) -> LeadState:
    return apply_batch(None, [
        ev("m1", T0, "identify", traits={"title": "VP Sales", "email": "a@x.example"}),
        ev("m2", T0 + 1, url="https://x.example/pricing"),
    ], r).state


@pytest.mark.parametrize("batched", [False, True])
def test_the_next_event_recomputes_fit_under_new_rules_and_keeps_engagement(
        batched: bool) -> None:
    old, new = rules(20), rules(30)
    s = identified(old)
    assert (s.fit, s.engagement, s.fit_rules) == (20, 10, old.version)
    e = ev("m3", T0 + 2, url="https://x.example/pricing")
    after = (apply_batch(s, [e], new) if batched else apply(s, e, new)).state
    assert (after.fit, after.engagement, after.fit_rules) == (30, 20, new.version)
    assert after.fit_hits == (("vp", 30),)


def test_without_a_touch_the_stored_fit_stays() -> None:
    old, new = rules(20), rules(30)
    s = identified(old)
    again = apply(s, ev("m2", T0 + 5, url="https://x.example/pricing"), new)  # a repeat
    assert again.state is s and s.fit == 20


def test_a_lead_already_under_the_rules_is_not_refit() -> None:
    r = rules(20)
    s = identified(r)
    # a fit that disagrees with its traits shows whether it was recomputed
    from dataclasses import replace
    odd = replace(s, fit=3.0)
    assert apply(odd, ev("m3", T0 + 2, url="https://x.example/pricing"), r).state.fit == 3.0
    assert apply(replace(odd, fit_rules=None), ev("m4", T0 + 2), r).state.fit == 20


def test_new_rules_that_disqualify_the_traits_move_the_lead_on_its_next_touch() -> None:
    old = rules(20)
    new = rules(20, "negative: [{id: no_x, when: {trait: email, domain_in: [x.example]}, "
                "points: -5, disqualify: true}]\n")
    s = identified(old)
    res = apply(s, ev("m3", T0 + 7, url="https://x.example/pricing"), new)
    moves = [o for o in res.outputs if isinstance(o, StageMove)]
    assert res.state.stage == "disqualified"
    assert [(m.to_stage, m.cause_rule, m.at_ms) for m in moves] == [
        ("disqualified", "no_x", T0 + 7)]


def test_the_rules_version_of_fit_survives_the_table() -> None:
    s = identified(rules(20))
    assert LeadState.from_dict(s.to_dict()) == s
    legacy = {k: v for k, v in s.to_dict().items() if k != "fit_rules"}
    assert LeadState.from_dict(legacy).fit_rules is None
