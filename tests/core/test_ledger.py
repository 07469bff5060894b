"""The score ledger: one ScoreChange per (event, rule) that changed a score, per fit rule
gained or lost, per group that decay lowered; none at all with the ledger off."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.engine import apply, apply_batch, tick
from pipeline.core.event import Event
from pipeline.core.outputs import ScoreChange
from pipeline.core.rules import parse_rules
from pipeline.core.state import MAX_CHANGES, LeadState

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a cap window boundary (epoch-aligned)

# Weights other than 1 so that the totals say the groups are weighted.
RULES = parse_rules("""\
thresholds: {mql: 500, hot: 900, recycle: 1, pql: 400}
groups: {engagement: {weight: 0.5}, product: {weight: 2}}
engagement:
  - {id: page_view, match: {type: page}, points: 2}
  - {id: pricing, match: {type: page, url: "*/pricing*"}, points: 10, cap: {points: 15, window: 7d}}
product:
  - {id: invite, match: {name: Invite Sent}, points: 4}
fit:
  - {id: senior, when: {trait: title, contains_any: [vp]}, points: 15}
  - {id: business, when: {trait: email, free_email: false}, points: 5}
negative:
  - {id: unsub, match: {name: Unsubscribed}, points: -6}
decay: {idle_after: 7d, points_per_period: {points: 3, period: 7d}}
""")


def ev(mid: str, type_: str = "track", name: str = "", t: int = T0, **kw: Any) -> Event:
    return Event(mid, "u1", type_, t, name=name, user_id="u1", **kw)


def changes(outputs: tuple[object, ...]) -> list[ScoreChange]:
    return [o for o in outputs if isinstance(o, ScoreChange)]


def rows(cs: list[ScoreChange]) -> list[tuple[Any, ...]]:
    return [(c.kind, c.rule, c.group, c.delta, c.engagement, c.product, c.total, c.message_id)
            for c in cs]


def test_an_event_that_hits_two_rules_gives_two_changes_with_running_totals() -> None:
    res = apply(None, ev("p1", "page", url="https://a.com/pricing"), RULES, ledger=True)
    # page_view +2 (eng 2, total 0.5*2 = 1), then pricing +10 (eng 12, total 6)
    assert rows(changes(res.outputs)) == [
        ("event", "page_view", "engagement", 2.0, 2.0, 0.0, 1.0, "p1"),
        ("event", "pricing", "engagement", 10.0, 12.0, 0.0, 6.0, "p1"),
    ]
    assert all(c.at_ms == T0 and c.lead_id == "u1" for c in changes(res.outputs))
    assert res.state.changes == tuple(changes(res.outputs))


def test_a_capped_rule_gives_no_change_once_capped() -> None:
    s = apply(None, ev("p1", "page", url="https://a.com/pricing"), RULES, ledger=True).state
    second = apply(s, ev("p2", "page", t=T0 + 1, url="https://a.com/pricing"), RULES,
                   ledger=True)
    # the cap leaves 5 of pricing's 10 points
    assert [(c.rule, c.delta, c.engagement) for c in changes(second.outputs)] == [
        ("page_view", 2.0, 14.0), ("pricing", 5.0, 19.0)]
    third = apply(second.state, ev("p3", "page", t=T0 + 2, url="https://a.com/pricing"),
                  RULES, ledger=True)
    assert [(c.rule, c.delta) for c in changes(third.outputs)] == [("page_view", 2.0)]


def test_product_and_negative_changes_name_their_group() -> None:
    res = apply_batch(None, [ev("i1", name="Invite Sent"), ev("u1", name="Unsubscribed", t=T0 + 1)],
                      RULES, ledger=True)
    assert rows(changes(res.outputs)) == [
        ("event", "invite", "product", 4.0, 0.0, 4.0, 8.0, "i1"),
        ("event", "unsub", "engagement", -6.0, -6.0, 4.0, 5.0, "u1"),
    ]


def test_decay_is_its_own_change_with_a_negative_delta() -> None:
    s = apply(None, ev("d1", name="Invite Sent"), RULES, ledger=True).state
    s = apply(s, ev("d2", "page", t=T0 + 1, url="https://a.com/x"), RULES, ledger=True).state
    # idle from T0+1+7d; at T0+22d two whole periods passed: 3 points off each group twice
    later = apply(s, ev("d3", "page", t=T0 + 22 * DAY, url="https://a.com/x"), RULES,
                  ledger=True)
    assert rows(changes(later.outputs)) == [
        ("decay", "decay", "engagement", -2.0, 0.0, 4.0, 8.0, "d3"),  # 2 floored at 0
        ("decay", "decay", "product", -4.0, 0.0, 0.0, 0.0, "d3"),
        ("event", "page_view", "engagement", 2.0, 2.0, 0.0, 1.0, "d3"),
    ]


def test_the_decay_timer_emits_decay_without_a_message_id() -> None:
    s = apply(None, ev("t1", name="Invite Sent"), RULES, ledger=True).state
    res = tick(s, T0 + 14 * DAY + 1, RULES, ledger=True)
    assert rows(changes(res.outputs)) == [("decay", "decay", "product", -3.0, 0.0, 1.0, 2.0,
                                           None)]
    assert res.state.changes[-1].at_ms == T0 + 14 * DAY + 1
    assert changes(tick(s, T0 + 14 * DAY + 1, RULES).outputs) == []


def test_fit_changes_per_trait_rule_gained_and_lost() -> None:
    s = apply(None, ev("f1", "identify", traits={"title": "VP Sales", "email": "a@acme.com"}),
              RULES, ledger=True)
    assert [(c.kind, c.rule, c.group, c.delta, c.fit, c.total) for c in changes(s.outputs)] == [
        ("fit", "senior", "fit", 15.0, 15.0, 15.0), ("fit", "business", "fit", 5.0, 20.0, 20.0)]
    s2 = apply(s.state, ev("f2", "identify", t=T0 + 1, traits={"title": "Engineer"}), RULES,
               ledger=True)
    assert [(c.rule, c.delta, c.fit) for c in changes(s2.outputs)] == [("senior", -15.0, 5.0)]
    assert s2.state.fit == 5.0


def test_ledger_off_builds_no_change_and_scores_the_same() -> None:
    evs = [ev("o1", "page", url="https://a.com/pricing"), ev("o2", name="Invite Sent", t=T0 + 1),
           ev("o3", "identify", t=T0 + 2, traits={"title": "VP"}),
           ev("o4", "page", t=T0 + 30 * DAY, url="https://a.com/")]
    on = apply_batch(None, evs, RULES, ledger=True)
    off = apply_batch(None, evs, RULES)
    assert changes(off.outputs) == [] and off.state.changes == ()
    assert [o for o in on.outputs if not isinstance(o, ScoreChange)] == list(off.outputs)
    assert (on.state.fit, on.state.engagement, on.state.product) == (
        off.state.fit, off.state.engagement, off.state.product)
    # the changes add up to the scores
    cs = changes(on.outputs)
    for group in ("fit", "engagement", "product"):
        assert sum(c.delta for c in cs if c.group == group) == pytest.approx(
            getattr(on.state, group))


def test_the_state_keeps_the_last_changes_and_round_trips() -> None:
    evs = [ev(f"k{i}", "page", t=T0 + i, url="https://a.com/") for i in range(MAX_CHANGES + 5)]
    s = apply_batch(None, evs, RULES, ledger=True).state
    assert len(s.changes) == MAX_CHANGES
    assert s.changes[0].message_id == "k5" and s.changes[-1].message_id == f"k{MAX_CHANGES + 4}"
    back = LeadState.from_dict(orjson.loads(orjson.dumps(s.to_dict())))
    assert back == s


def test_a_state_stored_before_the_ledger_loads_with_no_changes() -> None:
    s = apply(None, ev("a1", "page", url="https://a.com/"), RULES).state
    stored = s.to_dict()
    del stored["changes"]
    back = LeadState.from_dict(stored)
    assert back.changes == ()
    more = apply(back, ev("a2", "page", t=T0 + 1, url="https://a.com/"), RULES, ledger=True)
    assert [c.message_id for c in more.state.changes] == ["a2"]
