"""Scoring per rule kind: engagement (URL, UTM, properties), caps, fit, product, negative, decay."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.breakdown import breakdown
from pipeline.core.engine import apply, apply_batch, tick
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, Attribution, RoutingDecision, StageMove
from pipeline.core.rules import CompiledRules, parse_rules
from pipeline.core.state import MAX_CAP_WINDOWS, MAX_COUNT_TIMES, MAX_SEEN, LeadState

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01, a Thursday; window boundaries are epoch-aligned

BASE = "thresholds: {mql: 60, hot: 90, recycle: 20, pql: 40}\n"


def rules(extra: str) -> CompiledRules:
    return parse_rules(BASE + extra)


_n = 0


def ev(type_: str = "track", name: str = "", t: int = T0, **kw: Any) -> Event:
    global _n
    _n += 1
    kw.setdefault("user_id", "u")
    return Event(kw.pop("mid", f"m{_n}"), "u", type_, t, name=name, **kw)  # type: ignore[arg-type]


def run(r: CompiledRules, events: list[Event]) -> LeadState:
    return apply_batch(None, events, r).state


ENG = rules("""\
engagement:
  - {id: page_view, match: {type: page}, points: 1}
  - {id: pricing, match: {type: page, url: "*/pricing*"}, points: 10, cap: {points: 30, window: 7d}}
  - {id: compare, match: {type: page, url_regex: "/(compare|alternatives)"}, points: 8}
  - {id: linkedin, match: {type: page, utm: {source: linkedin, medium: paid}}, points: 4}
  - {id: ebook, match: {name: Document Downloaded, properties: {kind: ebook}}, points: 5}
  - {id: webinar, match: {name: Form Submitted, properties_contains: {form: Webinar}}, points: 7}
  - {id: opened, match: {name: Email Opened, source: email}, points: 1}
""")


def test_url_glob_and_regex() -> None:
    s = run(ENG, [ev("page", t=T0, url="https://acme.com/pricing/enterprise"),
                  ev("page", t=T0 + 1, url="https://acme.com/compare/rival"),
                  ev("page", t=T0 + 2, url="https://acme.com/blog/pricing-tips")])
    # the blog post about pricing matches the glob too: globs are on the whole URL
    assert s.engagement == 3 * 1 + 10 + 8 + 10
    assert s.contributions["pricing"][:2] == (20.0, 2)
    assert s.contributions["compare"][:2] == (8.0, 1)


def test_utm_matching_is_case_insensitive_and_needs_every_field() -> None:
    s = run(ENG, [ev("page", t=T0, url="https://a.com/", utm={"source": "LinkedIn",
                                                               "medium": "paid"}),
                  ev("page", t=T0 + 1, url="https://a.com/", utm={"source": "linkedin"})])
    assert s.engagement == 2 + 4
    assert s.contributions["linkedin"][1] == 1


def test_property_equality_contains_and_source() -> None:
    s = run(ENG, [ev(name="Document Downloaded", properties={"kind": "ebook"}),
                  ev(name="Document Downloaded", properties={"kind": "whitepaper"}),
                  ev(name="Form Submitted", properties={"form": "spring-webinar-2026"}),
                  ev(name="Email Opened", source="email"),
                  ev(name="Email Opened", source="web")])
    assert s.engagement == 5 + 7 + 1
    assert set(s.contributions) == {"ebook", "webinar", "opened"}


def test_cap_per_window_and_new_window() -> None:
    week = 7 * DAY
    start = (T0 // week + 1) * week  # a window boundary
    pricing = [ev("page", t=start + i * 3_600_000, url="https://a.com/pricing") for i in range(5)]
    later = [ev("page", t=start + week + i, url="https://a.com/pricing") for i in range(2)]
    s = run(ENG, pricing + later)
    assert s.contributions["pricing"][:2] == (30.0 + 20.0, 5)
    assert s.engagement == 7 + 50
    assert dict(s.caps)["pricing"] == ((start // week, 30), (start // week + 1, 20))


def test_fit_is_recomputed_from_latest_traits_not_summed() -> None:
    r = rules("""\
free_email_domains: [gmail.com]
fit:
  - {id: senior, when: {trait: title, contains_any: [vp, director, head of]}, points: 15}
  - {id: mid_size, when: {trait: employees, range: {min: 50, max: 5000}}, points: 10}
  - {id: saas, when: {trait: industry, any_of: [SaaS]}, points: 5}
  - {id: us, when: {trait: company.country, any_of: [us]}, points: 3}
  - {id: business, when: {trait: email, free_email: false}, points: 5}
negative:
  - {id: competitor, when: {domain_in: [rival.com]}, points: -50}
  - {id: student, when: {domain_endswith: [.edu]}, points: -30}
""")
    traits = {"email": "a@globex.com", "title": "VP Sales", "employees": 800,
              "industry": "saas", "company": {"country": "US"}}
    s = run(r, [ev("identify", t=T0, traits=traits), ev("identify", t=T0 + 1, traits=traits)])
    assert s.fit == 15 + 10 + 5 + 3 + 5
    assert dict(s.fit_hits) == {"senior": 15, "mid_size": 10, "saas": 5, "us": 3, "business": 5}
    # a new job title replaces the old one; "mvp" is not "vp"
    s = apply(s, ev("identify", t=T0 + 2, traits={"title": "MVP Engineer"}), r).state
    assert s.fit == 10 + 5 + 3 + 5
    s = apply(s, ev("identify", t=T0 + 3, traits={"email": "x@gmail.com"}), r).state
    assert s.fit == 10 + 5 + 3
    s = apply(s, ev("identify", t=T0 + 4, traits={"email": "x@rival.com"}), r).state
    assert s.fit == 10 + 5 + 3 + 5 - 50
    s = apply(s, ev("group", t=T0 + 5, traits={"email": "x@mit.edu", "employees": "12"}), r).state
    assert s.fit == 5 + 3 + 5 - 30
    # an older identify arriving late does not overwrite newer traits
    s = apply(s, ev("identify", t=T0 - 10, traits={"email": "a@globex.com"}), r).state
    assert s.fit == 5 + 3 + 5 - 30


PROD = rules("""\
product:
  - {id: trial, match: {name: Trial Started}, points: 20, cap: {points: 20, window: 52w}}
  - {id: invites, match: {name: Invite Sent}, count: {at_least: 3, within: 14d}, points: 25}
  - {id: limit, match: {name: Feature Limit Reached}, points: 15}
""")


def test_product_count_over_window() -> None:
    spread = [ev(name="Invite Sent", t=T0 + i * 10 * DAY) for i in range(3)]
    s = run(PROD, spread)
    assert s.product == 0  # never three within 14 days
    # all three kept: a late event between them may still complete a count
    assert s.counts["invites"] == (T0, T0 + 10 * DAY, T0 + 20 * DAY)
    s = apply(s, ev(name="Invite Sent", t=T0 + 21 * DAY), PROD).state
    assert s.product == 25 and "invites" in s.achieved and "invites" not in s.counts
    s = apply(s, ev(name="Invite Sent", t=T0 + 22 * DAY), PROD).state
    assert s.product == 25  # awarded once


def test_product_count_of_late_events() -> None:
    # Invites on days 0 and 20, then late ones on days 5 and 10: days 0, 5 and 10 lie within
    # 14 days of each other, so the day-10 invite completes the count (25), as in time
    # order. Remembering only the times within 14 days of the newest (day 20) had dropped
    # day 0 and day 5, and the count never completed.
    arrival = [ev(name="Invite Sent", t=T0 + d * DAY, mid=f"i{d}") for d in (0, 20, 5, 10)]
    s = run(PROD, arrival[:3])
    assert s.product == 0 and s.counts["invites"] == (T0, T0 + 5 * DAY, T0 + 20 * DAY)
    s = apply(s, arrival[3], PROD).state
    assert s.product == 25 and "invites" in s.achieved
    assert run(PROD, sorted(arrival, key=lambda e: e.timestamp_ms)).product == 25


def test_product_count_remembers_a_bounded_number_of_times() -> None:
    # One invite every 15 days never makes three within 14; only the last MAX_COUNT_TIMES
    # times are kept, so a late pair next to the first (forgotten) invite stays unpaired.
    spread = [ev(name="Invite Sent", t=T0 + i * 15 * DAY) for i in range(MAX_COUNT_TIMES + 1)]
    s = run(PROD, spread)
    assert s.counts["invites"] == tuple(T0 + i * 15 * DAY for i in range(1, MAX_COUNT_TIMES + 1))
    s = run(PROD, [*spread, ev(name="Invite Sent", t=T0 + 1), ev(name="Invite Sent", t=T0 + 2)])
    assert s.product == 0 and len(s.counts["invites"]) == MAX_COUNT_TIMES


def test_pql_threshold_moves_and_alerts() -> None:
    s = run(PROD, [ev("identify", t=T0, traits={"email": "a@b.com"})])
    res = apply_batch(s, [ev(name="Trial Started", t=T0 + 1), ev(name="Trial Started", t=T0 + 2),
                          ev(name="Feature Limit Reached", t=T0 + 3)], PROD)
    assert res.state.product == 35
    moves = [(o.from_stage, o.to_stage, o.cause_rule) for o in res.outputs
             if isinstance(o, StageMove)]
    assert moves == []  # 35 < 40
    res = apply(res.state, ev(name="Invite Sent", t=T0 + 4), PROD)
    res = apply_batch(res.state, [ev(name="Invite Sent", t=T0 + 5),
                                  ev(name="Invite Sent", t=T0 + 6)], PROD)
    assert res.state.product == 60 and res.state.stage == "pql"
    kinds = [(type(o).__name__, getattr(o, "to_stage", getattr(o, "kind", None)))
             for o in res.outputs if not isinstance(o, Attribution)]
    # the total (60) crosses the mql line in the same event: both moves, in funnel order
    assert kinds == [("StageMove", "mql"), ("StageMove", "pql"), ("AlertTrigger", "pql")]


def test_negative_event_rules() -> None:
    r = rules("""\
engagement:
  - {id: download, match: {name: Document Downloaded}, points: 5}
negative:
  - {id: unsub, match: {name: Unsubscribed}, points: -10}
  - {id: bounce, match: {name: Email Bounced}, points: -10, cap: {points: 10, window: 30d}}
""")
    s = run(r, [ev(name="Document Downloaded"), ev(name="Unsubscribed"),
                ev(name="Email Bounced"), ev(name="Email Bounced")])
    assert s.engagement == 5 - 10 - 10
    assert s.contributions["bounce"][:2] == (-10.0, 1)


HALF = rules("""\
engagement:
  - {id: d, match: {name: D}, points: 40}
decay: {idle_after: 14d, half_life: 30d}
""")


def test_decay_half_life_after_idle() -> None:
    s = run(HALF, [ev(name="D", t=T0)])
    s2 = apply(s, ev(name="X", t=T0 + 14 * DAY), HALF).state
    assert s2.engagement == 40  # not idle long enough yet
    s3 = apply(s, ev(name="X", t=T0 + 44 * DAY), HALF).state
    assert s3.engagement == pytest.approx(20)
    s4 = apply(s, ev(name="D", t=T0 + 74 * DAY), HALF).state
    assert s4.engagement == pytest.approx(10 + 40)


def test_decay_per_period_and_tick_composes() -> None:
    r = rules("""\
engagement:
  - {id: d, match: {name: D}, points: 40}
decay: {idle_after: 7d, points_per_period: {points: 5, period: 7d}}
""")
    s = run(r, [ev(name="D", t=T0)])
    assert apply(s, ev(name="X", t=T0 + 7 * DAY + 6 * DAY), r).state.engagement == 40
    direct = apply(s, ev(name="X", t=T0 + 7 * DAY + 22 * DAY), r).state
    assert direct.engagement == 40 - 3 * 5
    ticked = s
    for day in range(1, 30, 3):  # the shell's timer, then the event: same score
        ticked = tick(ticked, T0 + day * DAY, r).state
    ticked = apply(ticked, ev(name="X", t=T0 + 29 * DAY), r).state
    assert ticked.engagement == direct.engagement
    far = apply(s, ev(name="X", t=T0 + 400 * DAY), r).state
    assert far.engagement == 0  # floored, never negative


def test_decay_does_not_touch_fit_or_raise_negative_scores() -> None:
    r = rules("""\
fit:
  - {id: senior, when: {trait: title, contains_any: [vp]}, points: 15}
negative:
  - {id: unsub, match: {name: Unsubscribed}, points: -10}
decay: {idle_after: 1d, half_life: 1d}
""")
    s = run(r, [ev("identify", traits={"title": "VP"}), ev(name="Unsubscribed", t=T0 + 1)])
    s = tick(s, T0 + 30 * DAY, r).state
    assert (s.fit, s.engagement) == (15, -10)


def test_late_event_uses_its_own_window_and_decay() -> None:
    week = 7 * DAY
    start = (T0 // week + 1) * week
    s = run(ENG, [ev("page", t=start + week + 1, url="https://a.com/pricing")] * 1
            + [ev("page", t=start + 1, url="https://a.com/pricing") for _ in range(4)])
    # the late ones fill their own (older) window up to its cap; the 4th earns nothing
    assert s.contributions["pricing"][:2] == (40.0, 4)
    assert s.last_event_ms == start + week + 1 and s.first_event_ms == start + 1
    late = apply(run(HALF, [ev(name="X", t=T0 + 74 * DAY)]), ev(name="D", t=T0), HALF).state
    assert late.engagement == pytest.approx(10)  # 40 halved twice: idle 60 days since it


def test_duplicates_count_once_and_seen_is_bounded() -> None:
    e = ev("page", url="https://a.com/pricing")
    s = run(ENG, [e, e])
    assert s.engagement == 11
    res = apply(s, e, ENG)
    assert res.state is s and res.outputs == ()
    s = run(ENG, [ev("page", t=T0 + i, url="https://a.com/") for i in range(200)])
    assert len(s.seen) == MAX_SEEN


def test_alert_cooldown_and_new_trigger() -> None:
    r = rules("""\
alerts: {cooldown: 24h}
engagement:
  - {id: demo, match: {name: Demo Requested}, points: 30, trigger: {stage: mql, hot: true}}
  - {id: quote, match: {name: Quote Requested}, points: 30, trigger: {hot: true}}
""")
    s = run(r, [ev("identify", traits={"email": "a@b.com"})])
    res = apply_batch(s, [ev(name="Demo Requested", t=T0 + 1),
                          ev(name="Demo Requested", t=T0 + 2),
                          ev(name="Quote Requested", t=T0 + 3),
                          ev(name="Demo Requested", t=T0 + DAY + 10)], r)
    alerts = [(o.kind, o.rule, o.at_ms - T0, o.temperature) for o in res.outputs
              if isinstance(o, AlertTrigger)]
    assert alerts == [("instant", "demo", 1, "hot"), ("instant", "quote", 3, "hot"),
                      ("instant", "demo", DAY + 10, "hot")]
    routes = [o for o in res.outputs if isinstance(o, RoutingDecision)]
    assert routes == []  # hot leads get an alert, not nurture


def test_breakdown_explains_the_score() -> None:
    s = run(ENG, [ev("page", t=T0 + i, url="https://a.com/pricing", mid=f"p{i}")
                  for i in range(3)])
    b = breakdown(s, ENG)
    assert b["score_total"] == 33.0
    assert b["top_rules"][0] == {"rule": "pricing", "group": "engagement", "points": 30.0,
                                 "count": 3, "last_message_id": "p2", "last_at_ms": T0 + 2}
    assert b["recent_events"][0]["message_id"] == "p2"
    assert b["top_reasons"][0] == "pricing +30 (3x)"
    assert orjson.loads(orjson.dumps(b)) == b


def test_state_round_trips_through_json() -> None:
    r = rules("""\
engagement:
  - {id: p, match: {type: page, url: "*/pricing*"}, points: 10, cap: {points: 30, window: 7d}}
product:
  - {id: invites, match: {name: Invite Sent}, count: {at_least: 3, within: 14d}, points: 25}
fit:
  - {id: senior, when: {trait: title, contains_any: [vp]}, points: 15}
""")
    s = run(r, [ev("identify", traits={"title": "VP", "company": {"n": 1}}),
                ev("page", t=T0 + 1, url="https://a.com/pricing"),
                ev(name="Invite Sent", t=T0 + 2)])
    back = LeadState.from_dict(orjson.loads(orjson.dumps(s.to_dict())))
    assert back == s
    nxt = ev("page", t=T0 + 3, url="https://a.com/pricing")
    assert apply(back, nxt, r) == apply(s, nxt, r)


COOLDOWN = rules("""\
alerts: {cooldown: 24h}
engagement:
  - {id: demo, match: {name: Demo Requested}, points: 30, trigger: {stage: mql, hot: true}}
""")


def test_alert_cooldown_holds_for_an_event_older_than_the_last_alert() -> None:
    s = run(COOLDOWN, [ev("identify", traits={"email": "a@b.com"}),
                       ev(name="Demo Requested", t=T0 + DAY)])
    assert s.last_alert_ms == T0 + DAY
    # a late demo request 1 day - 1 ms before the alert: inside the 24 h cooldown, no alert
    late = apply(s, ev(name="Demo Requested", t=T0 + 1), COOLDOWN)
    assert [o for o in late.outputs if isinstance(o, AlertTrigger)] == []
    assert late.state.engagement == 60  # it still scores: 30 + 30
    # one 1 day + 10 ms before it: outside the cooldown, an alert of its own at its time
    older = apply(s, ev(name="Demo Requested", t=T0 - 10), COOLDOWN)
    assert [(o.kind, o.rule, o.at_ms, o.updates) for o in older.outputs
            if isinstance(o, AlertTrigger)] == [("instant", "demo", T0 - 10, None)]


CAPPED = rules("""\
engagement:
  - {id: pricing, match: {type: page, url: "*/pricing*"}, points: 10, cap: {points: 30, window: 7d}}
""")


def test_a_late_event_older_than_the_remembered_cap_windows_scores_nothing() -> None:
    week = 7 * DAY
    start = (T0 // week + 1) * week  # a window boundary
    # one pricing view in each of 8 weeks: 8 x 10, the 8 windows the state remembers
    s = run(CAPPED, [ev("page", t=start + i * week + 1, url="https://a.com/pricing")
                     for i in range(MAX_CAP_WINDOWS)])
    assert s.engagement == 80
    assert [w for w, _ in s.caps["pricing"]] == [start // week + i for i in range(8)]
    # the week before the oldest remembered one: its total is unknown, so 0 (never over cap)
    lost = apply(s, ev("page", t=start - week + 1, url="https://a.com/pricing"), CAPPED).state
    assert lost.engagement == 80
    assert lost.caps == s.caps
    # a late view in the oldest remembered week (10 of 30 used) still earns its 10
    kept = apply(s, ev("page", t=start + 5, url="https://a.com/pricing"), CAPPED).state
    assert kept.engagement == 90
    assert kept.caps["pricing"][0] == (start // week, 20)
