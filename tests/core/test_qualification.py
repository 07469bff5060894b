"""Qualification decisions with the shipped rules: temperature both ways, recycling by
activity, disqualification, alert requirements (review), SQL criteria, rejection reasons,
one alert per hand-raise. Expected values are worked out by hand from default.yaml."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.core.engine import apply_batch, scores, tick
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, MoveRefused, RoutingDecision, StageMove
from pipeline.core.rules import load_default_rules, parse_rules
from pipeline.core.state import LeadState
from pipeline.errors import RulesError

R = load_default_rules()
DAY = 86_400_000
T0 = 1_767_225_600_000 + 10 * 3_600_000  # 2026-01-01 10:00 UTC, mid window for every cap
_n = 0

# Segment spec traits of a perfect fit: senior 15 + size 10 + industry 5 + country 5 +
# business e-mail 5 = 40 (the fit cap).
VP = {"title": "VP Sales", "email": "ana@globex.com",
      "company": {"employee_count": 200, "industry": "software"}, "address": {"country": "US"}}


def ev(type_: str, t: int, name: str = "", **kw: Any) -> Event:
    global _n
    _n += 1
    return Event(f"q{_n}", "u", type_, t, name=name, user_id="u", **kw)  # type: ignore[arg-type]


def engaged(t: int) -> list[Event]:
    """Engagement 64: pricing 3x(10 + page view 1), 3 downloads x5, 2 webinars x8."""
    out = [ev("page", t + i, url="https://x.com/pricing") for i in range(3)]
    out += [ev("track", t + 10 + i, "Document Downloaded") for i in range(3)]
    out += [ev("track", t + 20 + i, "Webinar Registered") for i in range(2)]
    return out


def run(state: LeadState | None, evs: list[Event]) -> tuple[LeadState, tuple[Any, ...]]:
    res = apply_batch(state, evs, R)
    return res.state, res.outputs


def alerts(outs: tuple[Any, ...]) -> list[AlertTrigger]:
    return [o for o in outs if isinstance(o, AlertTrigger)]


def reviews(outs: tuple[Any, ...]) -> list[RoutingDecision]:
    return [o for o in outs if isinstance(o, RoutingDecision) and o.route == "review"]


def test_spec_trait_paths_give_the_fit() -> None:
    s, _ = run(None, [ev("identify", T0, traits=VP)])
    assert s.fit == 40.0
    assert dict(s.fit_hits) == {"senior_title": 15, "company_size_mid": 10,
                                "target_industry": 5, "core_country": 5, "business_email": 5}


def test_good_fit_lead_that_goes_quiet_is_recycled_and_alerted_again_on_return() -> None:
    s, outs = run(None, [ev("identify", T0, traits=VP), *engaged(T0 + 1000)])
    assert scores(s, R)["total"] == 104.0 and s.stage == "mql" and s.hot
    assert [a.kind for a in alerts(outs)] == ["hot_score"]
    # 120 days later: engagement decayed for 106 days (idle after 14d, half-life 30d):
    # 64 * 0.5 ** (106 / 30) = 5.53, activity below the recycle line (20) whatever the fit.
    res = tick(s, T0 + 120 * DAY, R)
    s = res.state
    assert s.stage == "recycled" and not s.hot
    assert round(s.engagement, 2) == pytest.approx(5.53, abs=0.01)
    assert [(o.from_stage, o.to_stage) for o in res.outputs if isinstance(o, StageMove)] == [
        ("mql", "recycled")]
    assert [o.route for o in res.outputs if isinstance(o, RoutingDecision)] == ["recycle"]
    # back a day later, as engaged as before: an MQL again and a new alert
    s, outs = run(s, engaged(T0 + 121 * DAY))
    assert s.stage == "mql" and s.hot
    assert [a.kind for a in alerts(outs)] == ["hot_score"]


def test_hot_has_hysteresis_and_a_cooled_lead_alerts_again() -> None:
    s, outs = run(None, [ev("identify", T0, traits=VP), *engaged(T0 + 1000)])
    assert len(alerts(outs)) == 1
    # two unsubscribes: 104 - 20 = 84, under the hot line (90) but not under cool_below (75)
    s, outs = run(s, [ev("track", T0 + 5000 + i, "Unsubscribed") for i in range(2)])
    assert scores(s, R)["total"] == 84.0 and s.hot
    s, outs = run(s, [ev("track", T0 + 6000, "Order Completed")])  # +35 = 119: still the
    assert s.hot and alerts(outs) == []                              # same hot spell
    s, outs = run(s, [ev("track", T0 + 7000 + i, "Unsubscribed") for i in range(5)])
    assert scores(s, R)["total"] == 69.0 and not s.hot  # below 75: cooled
    s, outs = run(s, [ev("track", T0 + 2 * DAY, "Order Completed")])  # 104, past the cooldown
    assert s.hot and [a.kind for a in alerts(outs)] == ["hot_score"]


def test_a_hand_raiser_is_hot_whatever_its_score_until_it_goes_idle() -> None:
    s, _ = run(None, [ev("identify", T0, traits=VP), ev("track", T0 + 1, "Demo Requested")])
    assert scores(s, R)["total"] == 70.0 and s.hot  # 40 + 30, under cool_below (75)
    s, _ = run(s, [ev("page", T0 + 2, url="https://x.com/blog/a")])  # 73: still hot
    assert s.hot
    # idle: after 14 days decay starts, and a quiet lead under the line cools
    assert not tick(s, T0 + 15 * DAY, R).state.hot


def test_competitor_is_disqualified_and_its_demo_request_goes_to_review() -> None:
    s, outs = run(None, [ev("identify", T0, traits={"email": "c@rivalcrm.example"})])
    assert s.stage == "disqualified"
    assert [(o.to_stage, o.cause_rule) for o in outs if isinstance(o, StageMove)][-1] == (
        "disqualified", "competitor_domain")
    s, outs = run(s, [ev("track", T0 + 1000, "Demo Requested")])
    assert alerts(outs) == [] and s.stage == "disqualified"
    [r] = reviews(outs)
    assert (r.rule, r.reason) == ("demo_request", "lead is disqualified")


def test_spam_complaint_disqualifies() -> None:
    spam = ev("track", T0 + 1, "Email Marked as Spam")
    s, outs = run(None, [ev("identify", T0, traits=VP), spam])
    assert s.stage == "disqualified" and not s.hot
    assert ("lead", "disqualified", "spam_complaint") in [
        (o.from_stage, o.to_stage, o.cause_rule) for o in outs if isinstance(o, StageMove)]


def test_student_demo_request_and_hot_score_go_to_review_not_to_a_team() -> None:
    student = {"title": "Student", "email": "kim@gmail.com"}
    s, outs = run(None, [ev("identify", T0, traits=student),
                         ev("track", T0 + 1, "Demo Requested")])
    assert alerts(outs) == [] and s.stage == "lead" and not s.hot  # no trigger move
    [r] = reviews(outs)
    assert (r.rule, r.reason) == ("demo_request", "outside the ICP: out_of_icp_title")
    # fit -20; engagement 30 + 64 + 35 capped at 100; a trial +20: total 100, hot. Reviewed
    # too, once
    evs = [*engaged(T0 + 2 * DAY), ev("track", T0 + 2 * DAY + 99, "Order Completed"),
           ev("track", T0 + 2 * DAY + 100, "Trial Started")]
    s, outs = run(s, evs)
    assert alerts(outs) == []
    assert [(r.rule, r.reason) for r in reviews(outs)] == [
        ("hot_threshold", "outside the ICP: out_of_icp_title")]


def test_a_hand_raise_that_also_crosses_the_hot_line_is_one_review_hand_off() -> None:
    # A recruiter at an ICP company: fit -20 (out_of_icp_title) + 5 business e-mail + 10
    # size + 5 industry + 5 country = 5. Engagement 64 (`engaged`): total 69, an MQL. A demo
    # request (+30) takes engagement to 94, total 99: the hand-raise fails alerts.require and
    # the same event crosses the hot line (90). One event, one review hand-off (its id is
    # `<lead>:review:<messageId>`), named for the hand-raise as an alert would be.
    recruiter = {**VP, "title": "Recruiter"}
    s, _ = run(None, [ev("identify", T0, traits=recruiter), *engaged(T0 + 1)])
    assert (s.fit, s.stage, s.hot) == (5.0, "mql", False)
    demo = ev("track", T0 + 100, "Demo Requested")
    s, outs = run(s, [demo])
    assert alerts(outs) == []
    assert [(r.rule, r.reason, r.message_id, r.temperature, r.score_total)
            for r in reviews(outs)] == [
        ("demo_request", "outside the ICP: out_of_icp_title", demo.message_id, "hot", 99.0)]
    # the hot line was crossed all the same: a later event inside the cooldown sends nothing
    assert s.hot and s.stage == "mql"
    s, outs = run(s, [ev("page", T0 + 200, url="https://x.com/pricing")])
    assert reviews(outs) == [] and alerts(outs) == []


def test_sql_needs_bant_criteria() -> None:
    s, _ = run(None, [ev("identify", T0, traits=VP), ev("track", T0 + 1, "Demo Requested")])
    assert s.stage == "mql"
    s, outs = run(s, [ev("track", T0 + 2, "Lead Qualified", properties={"budget": "50k"})])
    assert s.stage == "mql"
    [ref] = [o for o in outs if isinstance(o, MoveRefused)]
    assert ref.to_stage == "sql"
    assert ref.reason == "BANT criteria missing on 'Lead Qualified': authority, need, timeline"
    bant = {"budget": "50k", "authority": "CFO signs", "need": "routing", "timeline": "Q2"}
    s, outs = run(s, [ev("track", T0 + 3, "Lead Qualified", properties=bant)])
    assert s.stage == "sql"


def test_rejection_reason_is_kept_on_the_lead() -> None:
    s, _ = run(None, [ev("identify", T0, traits=VP), ev("track", T0 + 1, "Demo Requested")])
    s, outs = run(s, [ev("track", T0 + 2, "Lead Rejected", properties={"reason": "no_budget"})])
    [m] = [o for o in outs if isinstance(o, StageMove)]
    assert (m.to_stage, m.detail) == ("recycled", "no_budget")
    assert s.rejection == "no_budget"
    assert LeadState.from_dict(s.to_dict()) == s


def test_demo_request_after_a_hot_score_alert_updates_it() -> None:
    s, outs = run(None, [ev("identify", T0, traits=VP), *engaged(T0 + 1000)])
    [first] = alerts(outs)
    s, outs = run(s, [ev("track", T0 + 3_600_000, "Demo Requested")])
    [second] = alerts(outs)
    assert second.kind == "instant" and second.updates == first.alert_id
    assert s.last_alert_id == second.alert_id
    # outside the cooldown a hand-raise is a new alert of its own
    s, outs = run(s, [ev("track", T0 + 3 * DAY, "Quote Requested")])
    assert [a.updates for a in alerts(outs)] == [None]


BASE = """\
thresholds: {mql: 60, hot: 90, recycle: 20, pql: 40}
fit:
  - {id: senior, when: {trait: title, contains_any: [vp]}, points: 15}
"""


@pytest.mark.parametrize(("extra", "message"), [
    ("groups: {fit: {max: 85}}\nfit:\n  - {id: big, when: {trait: title, any_of: [x]}, "
     "points: 90}\n", "rules.yaml:2 groups.fit: fit alone can reach 85, at or above the line "
     "where a hot lead cools (80)"),
    ("alerts: {require: {none_of: [nope]}}\n",
     "rules.yaml:4 alerts.require.none_of[0]: 'nope' is not a fit or negative trait rule"),
    ("alerts: {require: {traits: [{trait: titel, contains_any: [vp]}]}}\n",
     "rules.yaml:4 alerts.require.traits[0].trait: unknown trait 'titel'"),
])
def test_rules_check_refuses_inconsistent_settings(extra: str, message: str) -> None:
    text = BASE + extra if not extra.startswith("groups") else (
        "thresholds: {mql: 60, hot: 90, recycle: 20, pql: 40}\n" + extra)
    with pytest.raises(RulesError) as err:
        parse_rules(text)
    assert str(err.value).startswith(message)
