"""Routing: team choice, weighted round robin, caps, availability, account ownership."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from pipeline.core.routing import (
    DAY_MS,
    Assignment,
    RoutingRules,
    TeamState,
    assign,
    choose_team,
    email_domain,
)
from pipeline.core.rules import load_default_rules

RULES = RoutingRules.model_validate({
    "teams": [
        {"name": "enterprise", "match": {"min_employees": 1000},
         "reps": [{"id": "e1", "capacity": 3}, {"id": "e2", "capacity": 1}]},
        {"name": "emea", "match": {"countries": ["de", "FR", "GB"]},
         "reps": [{"id": "m1", "daily_cap": 2}, {"id": "m2", "available": False},
                  {"id": "m3"}]},
        {"name": "sales", "reps": [{"id": "s1"}]},
    ],
})


def test_first_matching_team_wins_and_catch_all_takes_the_rest() -> None:
    assert choose_team(RULES, {"employees": 5000, "country": "DE"})[0].name == "enterprise"
    team, why = choose_team(RULES, {"employees": 50, "country": "de"})
    assert team.name == "emea" and "country DE" in why
    assert choose_team(RULES, {"country": "US"})[0].name == "sales"
    assert choose_team(RULES, {})[1] == "catch-all team"


def test_round_robin_follows_capacity_weights() -> None:
    team = RULES.teams[0]
    st = None
    owners = []
    for i in range(40):
        st, a = assign(team, st, domain=None, at_ms=i)
        owners.append(a.owner)
    assert Counter(owners) == {"e1": 30, "e2": 10}
    assert owners[:4].count("e2") == 1  # interleaved, not 3 in a row then 1


def test_unavailable_skipped_and_daily_cap_resets_next_day() -> None:
    team = RULES.teams[1]
    st = None
    owners = []
    for i in range(6):
        st, a = assign(team, st, domain=None, at_ms=i)
        owners.append(a.owner)
    assert "m2" not in owners
    assert owners.count("m1") == 2  # capped at 2 a day
    assert any("m1: daily cap 2 reached" in s for s in a.skipped)
    st, a = assign(team, st, domain=None, at_ms=DAY_MS + 1)
    assert st.today == {a.owner: 1}


def test_account_owner_keeps_new_leads_from_the_same_company() -> None:
    team = RULES.teams[0]
    st, a1 = assign(team, None, domain="globex.com", at_ms=0)
    for i in range(5):
        st, a = assign(team, st, domain="globex.com", at_ms=i + 1)
        assert a.owner == a1.owner and a.reason == "account owner of globex.com"
    st2 = TeamState.from_dict(st.to_dict())
    assert st2 == st


def test_excluded_rep_after_sla_breach_is_not_chosen_again() -> None:
    team = RULES.teams[0]
    _, a = assign(team, None, domain=None, at_ms=0, exclude=frozenset({"e1"}))
    assert a.owner == "e2"


def test_free_mail_is_not_an_account() -> None:
    free = load_default_rules().free_email
    assert email_domain({"email": "Ana@Globex.com"}, free) == "globex.com"
    assert email_domain({"email": "ana@gmail.com"}, free) is None
    # the rules file's list, not a shorter one of routing's own
    assert email_domain({"email": "ana@web.de"}, free) is None
    assert email_domain({"email": "li@qq.com"}, free) is None
    assert email_domain({}, free) is None


@pytest.mark.parametrize("teams, msg", [
    ([{"name": "a", "match": {"min_employees": 1}}], "catch-all"),
    ([{"name": "a"}, {"name": "b", "match": {"countries": ["US"]}}], "must come last"),
    ([{"name": "a"}, {"name": "a"}], "unique"),
])
def test_invalid_routing_rules_say_what_is_wrong(teams: list[dict[str, object]], msg: str) -> None:
    with pytest.raises(ValidationError, match=msg):
        RoutingRules.model_validate({"teams": teams})


def test_an_ineligible_account_owner_falls_back_to_round_robin_and_keeps_the_account() -> None:
    emea = RULES.teams[1]  # m1 (daily cap 2), m2 (unavailable), m3
    # m1 owns initech.com but already took its 2 leads today (day 0)
    st = TeamState(day=0, today={"m1": 2}, accounts={"initech.com": "m1"})
    st, a = assign(emea, st, domain="initech.com", at_ms=1_000)
    # m1 is skipped as owner and as candidate, m2 is off: m3 is the only one left
    assert a == Assignment("m3", "weighted round robin by capacity", (
        "m1: account owner but daily cap 2 reached", "m1: daily cap 2 reached",
        "m2: unavailable"))
    assert st.today == {"m1": 2, "m3": 1}
    # the account stays m1's: the next day (counts reset) m1 gets the company's leads again
    assert st.accounts == {"initech.com": "m1"}
    _, a = assign(emea, st, domain="initech.com", at_ms=DAY_MS + 1_000)
    assert (a.owner, a.reason) == ("m1", "account owner of initech.com")


def test_company_size_for_team_choice_reads_the_spec_trait_company_employee_count() -> None:
    # Segment's spec trait alone: 5000 >= 1000 employees, the enterprise team
    team, why = choose_team(RULES, {"company": {"employee_count": 5000}, "country": "US"})
    assert (team.name, why) == ("enterprise", "territory/segment match: 5000 employees")
    # a flat `employees` trait is read first: 10 employees is not enterprise, US not emea
    assert choose_team(RULES, {"employees": 10, "company": {"employee_count": 5000},
                               "country": "US"})[0].name == "sales"
    # true is no head count (bool is an int in Python): no size, so the catch-all
    assert choose_team(RULES, {"company": {"employee_count": True}})[0].name == "sales"
