"""Attribution models against credit worked out by hand, and deal amounts."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from pipeline.core.attribution import (
    BAD_CAMPAIGN_COST,
    MODELS,
    CampaignCost,
    by_channel,
    campaign_cost,
    deal_amount,
    weights,
)
from pipeline.core.engine import apply_batch
from pipeline.core.event import Event
from pipeline.core.outputs import Attribution
from pipeline.core.rules import load_default_rules
from pipeline.core.state import LeadState
from pipeline.core.touches import CREATED, Touch
from pipeline.errors import InvalidEvent

RULES = load_default_rules()
T0 = 1_767_225_600_000
H = 3_600_000


def _touch(channel: str, i: int, *marks: str) -> Touch:
    return Touch(channel, T0 + i * H, f"m{i}", last_ms=T0 + i * H, marks=marks)


# The journey: five touches across three channels, the lead created on the second.
#   1 paid_search   2 email (lead created)   3 organic_search   4 email   5 paid_search
JOURNEY = (_touch("paid_search", 1), _touch("email", 2, CREATED),
           _touch("organic_search", 3), _touch("email", 4), _touch("paid_search", 5, "mql"))

# Worked out by hand, per touch and per channel:
# first_touch: touch 1 gets it all                     -> paid_search 1
# last_touch:  touch 5 gets it all                     -> paid_search 1
# linear:      1/5 = 0.2 each                          -> paid_search 0.4, email 0.4,
#                                                         organic_search 0.2
# u_shaped:    0.4 first, 0.4 last, 0.2 / 3 between    -> paid_search 0.8,
#                                                         email 0.2/3 * 2 = 0.1333...,
#                                                         organic_search 0.0666...
# w_shaped:    0.3 first, 0.3 created (2), 0.3 last,   -> paid_search 0.6,
#              0.1 / 2 = 0.05 to touches 3 and 4           email 0.3 + 0.05 = 0.35,
#                                                         organic_search 0.05
EXPECTED_TOUCH = {
    "first_touch": (1, 0, 0, 0, 0),
    "last_touch": (0, 0, 0, 0, 1),
    "linear": (0.2, 0.2, 0.2, 0.2, 0.2),
    "u_shaped": (0.4, 0.2 / 3, 0.2 / 3, 0.2 / 3, 0.4),
    "w_shaped": (0.3, 0.3, 0.05, 0.05, 0.3),
}
EXPECTED_CHANNEL = {
    "first_touch": {"paid_search": 1, "email": 0, "organic_search": 0},
    "last_touch": {"paid_search": 1, "email": 0, "organic_search": 0},
    "linear": {"paid_search": 0.4, "email": 0.4, "organic_search": 0.2},
    "u_shaped": {"paid_search": 0.8, "email": 0.4 / 3, "organic_search": 0.2 / 3},
    "w_shaped": {"paid_search": 0.6, "email": 0.35, "organic_search": 0.05},
}


@pytest.mark.parametrize("model", MODELS)
def test_five_touches_three_channels(model: str) -> None:
    ws = weights(model, JOURNEY)
    assert ws == pytest.approx(EXPECTED_TOUCH[model])
    assert math.fsum(ws) == pytest.approx(1.0)
    assert by_channel(JOURNEY, ws) == pytest.approx(EXPECTED_CHANNEL[model])


def test_short_journeys() -> None:
    one = JOURNEY[:1]
    assert {m: weights(m, one) for m in MODELS} == {m: (1.0,) for m in MODELS}
    two = (JOURNEY[0], JOURNEY[2])
    # U: nothing between, so the 20 % splits over first and last: 50/50
    assert weights("u_shaped", two) == pytest.approx((0.5, 0.5))
    # W without a lead-creation touch: the first counts as it (0.3 + 0.3), last 0.3, and the
    # 0.1 spreads over the three key positions: 0.6 + 0.0667, 0.3 + 0.0333
    assert weights("w_shaped", two) == pytest.approx((0.6 + 0.2 / 3, 0.3 + 0.1 / 3))
    assert weights("linear", ()) == ()


@pytest.mark.parametrize(("props", "expected"), [
    ({"amount": 12000, "currency": "eur"}, (12000.0, "EUR", None)),
    ({"amount": "2500.50"}, (2500.5, None, None)),
    ({}, (None, None, None)),
    ({"amount": "a lot"}, (None, None, "not_a_number")),
    ({"amount": True}, (None, None, "not_a_number")),
    ({"amount": {"value": 3}}, (None, None, "not_a_number")),
    ({"amount": "NaN"}, (None, None, "not_finite")),
    ({"amount": 10**400}, (None, None, "not_finite")),
    ({"amount": -5}, (None, None, "negative")),
])
def test_deal_amount(props: dict[str, object], expected: tuple[object, ...]) -> None:
    assert deal_amount(props) == expected


def _ev(mid: str, t: int, typ: str = "track", **kw: object) -> Event:
    for k in ("properties", "traits", "utm"):
        if k in kw:
            kw[k] = MappingProxyType(kw[k])  # type: ignore[arg-type]
    return Event(mid, "u1", typ, T0 + t * H, **kw)  # type: ignore[arg-type]


def test_engine_attributes_mql_and_opportunity_to_the_journey() -> None:
    evs = [
        _ev("p1", 1, "page", url="https://acme.io/?utm_source=google&utm_medium=cpc&utm_campaign=q4"),
        _ev("p2", 2, "page", url="https://acme.io/blog", referrer="https://www.google.com/"),
        _ev("i1", 3, "identify", traits={"email": "ann@corp.example"}, user_id="u1"),
        _ev("e1", 4, name="Email Link Clicked", utm={"source": "newsletter", "medium": "email"}),
        _ev("d1", 5, name="Demo Requested"),
        _ev("o1", 6, name="Opportunity Created", properties={"amount": "40000", "currency": "usd"}),
        _ev("w1", 7, name="Deal Won", properties={"amount": "lots"}),
    ]
    res = apply_batch(None, evs, RULES)
    att = [o for o in res.outputs if isinstance(o, Attribution)]
    assert [(a.from_stage, a.stage) for a in att] == [
        ("lead", "mql"), ("mql", "opportunity"), ("opportunity", "customer")]
    mql, opp, won = att
    # paid search, then organic search (a Google referrer, no UTM), then e-mail; the lead was
    # created on the organic visit (the latest touch when it identified)
    assert [t.channel for t in mql.touches] == ["paid_search", "organic_search", "email"]
    assert mql.touches[0].campaign == "q4" and mql.touches[1].referrer == "www.google.com"
    assert mql.touches[1].marks == ("lead",)
    credits = dict(mql.credits)
    assert set(credits) == set(MODELS)
    # W with the creation touch in the middle: 0.3 + 0.3 + 0.3 and the 0.1 over the three
    assert credits["w_shaped"] == pytest.approx((0.3 + 0.1 / 3,) * 3)
    assert credits["u_shaped"] == pytest.approx((0.4, 0.2, 0.4))
    assert (mql.amount, mql.amount_issue) == (None, None)
    assert (opp.amount, opp.currency, opp.amount_issue) == (40000.0, "USD", None)
    # a non-numeric amount: the deal still moves and is attributed, the amount is named unused
    assert (won.amount, won.amount_issue) == (None, "not_a_number")
    assert res.state.stage == "customer"


def test_attribution_without_touches_credits_nothing() -> None:
    evs = [_ev("i1", 1, "identify", traits={"email": "ann@corp.example"}, user_id="u1"),
           _ev("d1", 2, name="Demo Requested")]
    res = apply_batch(None, evs, RULES)
    (att,) = [o for o in res.outputs if isinstance(o, Attribution)]
    assert att.touches == () and dict(att.credits) == {m: () for m in MODELS}


def _won(evs: list[Event], state: LeadState | None) -> tuple[Attribution, LeadState]:
    res = apply_batch(state, evs, RULES)
    return [o for o in res.outputs if isinstance(o, Attribution)][-1], res.state


def test_a_deal_won_without_an_amount_is_worth_its_opportunity() -> None:
    lead = [_ev("i1", 1, "identify", traits={"email": "ann@corp.example"}, user_id="u1"),
            _ev("d1", 2, name="Demo Requested"),
            _ev("o1", 3, name="Opportunity Created",
                properties={"amount": "40000", "currency": "usd"})]
    res = apply_batch(None, lead, RULES)
    assert res.state.opportunity == (40000.0, "USD")
    # no amount at all, even with a currency of its own: the opportunity's amount and currency
    won, _ = _won([_ev("w1", 4, name="Deal Won", properties={"currency": "eur"})], res.state)
    assert (won.stage, won.amount, won.currency, won.amount_issue) == (
        "customer", 40000.0, "USD", None)
    # an amount of its own wins
    won, _ = _won([_ev("w2", 4, name="Deal Won", properties={"amount": 35000})], res.state)
    assert (won.amount, won.currency, won.amount_issue) == (35000.0, None, None)
    # an amount that is given but unusable stays named, not replaced
    won, _ = _won([_ev("w3", 4, name="Deal Won", properties={"amount": "lots"})], res.state)
    assert (won.amount, won.amount_issue) == (None, "not_a_number")
    # the state survives its stored form, and one stored before the field existed loads
    assert LeadState.from_dict(res.state.to_dict()) == res.state
    old = res.state.to_dict()
    del old["opportunity"]
    won, _ = _won([_ev("w4", 4, name="Deal Won")], LeadState.from_dict(old))
    assert (won.amount, won.amount_issue) == (None, None)


def test_an_opportunity_without_a_usable_amount_leaves_a_deal_won_without_one() -> None:
    lead = [_ev("i1", 1, "identify", traits={"email": "ann@corp.example"}, user_id="u1"),
            _ev("d1", 2, name="Demo Requested"),
            _ev("o1", 3, name="Opportunity Created", properties={"amount": -10}),
            _ev("w1", 4, name="Deal Won")]
    res = apply_batch(None, lead, RULES)
    won = [o for o in res.outputs if isinstance(o, Attribution)][-1]
    assert res.state.opportunity is None
    assert (won.stage, won.amount, won.amount_issue) == ("customer", None, None)


def test_campaign_cost_reads_channel_and_amount_and_names_what_is_wrong() -> None:
    c = campaign_cost("c1", {"channel": " Paid_Social", "campaign": " spring ",
                             "amount": "99.5", "currency": "eur"})
    assert c == CampaignCost("paid_social", "spring", 99.5, "EUR", "c1")
    assert campaign_cost("c2", {"channel": "email", "amount": 0}).amount == 0.0
    for props, why in [({"amount": 5}, "needs properties.channel"),
                       ({"channel": 7, "amount": 5}, "needs properties.channel"),
                       ({"channel": "email"}, "properties.amount is missing"),
                       ({"channel": "email", "amount": "NaN"}, "'NaN': not_finite"),
                       ({"channel": "email", "amount": True}, "True: not_a_number")]:
        with pytest.raises(InvalidEvent, match=why) as exc:
            campaign_cost("c3", props)
        assert exc.value.reason == BAD_CAMPAIGN_COST
