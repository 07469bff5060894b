"""The acceptance scenario, in product.md's words, with the shipped default rules.

A visitor reads a blog post, downloads an e-book, fills a form, visits pricing three
times, requests a demo, is accepted by sales, gets an opportunity.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.engine import apply
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, Output, RoutingDecision, StageMove
from pipeline.core.rules import load_default_rules
from pipeline.core.state import LeadState

T0 = 1_772_442_000_000  # 2026-03-02T09:00:00Z
MIN = 60_000


def journey() -> list[Event]:
    anon, user = "anon-1", "ada"

    def page(i: int, path: str, name: str) -> Event:
        return Event(f"m{i}", user, "page", T0 + i * MIN, name=name, source="web",
                     url=f"https://example.com{path}", anonymous_id=anon)

    def track(i: int, src: str, name: str, **props: Any) -> Event:
        return Event(f"m{i}", user, "track", T0 + i * MIN, name=name, source=src,
                     properties=props, anonymous_id=anon, user_id=user)

    return [
        page(1, "/blog/mql-vs-sql", "Blog Post"),
        track(2, "web", "Document Downloaded", title="Lead scoring e-book"),
        Event("m3", user, "identify", T0 + 3 * MIN, source="web", anonymous_id=anon,
              user_id=user, traits={"email": "ada@globex.com", "title": "VP Sales",
                                    "employees": 800, "industry": "software",
                                    "country": "US"}),
        track(4, "web", "Form Submitted", form="ebook"),
        page(5, "/pricing", "Pricing"),
        page(6, "/pricing", "Pricing"),
        page(7, "/pricing", "Pricing"),
        track(8, "web", "Demo Requested", form="demo"),
        track(9, "crm", "Lead Accepted"),
        track(10, "crm", "Opportunity Created", amount=12000),
    ]


def run() -> tuple[LeadState, list[Output]]:
    rules = load_default_rules()
    state: LeadState | None = None
    outs: list[Output] = []
    for e in journey():
        res = apply(state, e, rules)
        state = res.state
        outs += res.outputs
    assert state is not None
    return state, outs


def test_stage_moves_in_order() -> None:
    state, outs = run()
    assert [(o.from_stage, o.to_stage) for o in outs if isinstance(o, StageMove)] == [
        ("visitor", "lead"),
        ("lead", "mql"),
        ("mql", "sal"),
        ("sal", "opportunity"),
    ]
    assert state.stage == "opportunity"


def test_what_sales_sees_along_the_way() -> None:
    _, outs = run()
    causes = [(o.cause_message_id, o.cause_rule) for o in outs if isinstance(o, StageMove)]
    assert causes == [("m2", "identified"), ("m5", "mql_threshold"),
                      ("m9", "crm:Lead Accepted"), ("m10", "crm:Opportunity Created")]
    # warm at the first pricing visit: nurture; hot at the third: an alert; then the demo
    # request is news inside the cooldown: a second, instant alert
    assert [(o.route, o.message_id) for o in outs if isinstance(o, RoutingDecision)] == [
        ("nurture", "m5")]
    alerts = [o for o in outs if isinstance(o, AlertTrigger)]
    assert [(a.kind, a.temperature, a.message_id) for a in alerts] == [
        ("hot_score", "hot", "m7"), ("instant", "hot", "m8")]
    assert alerts[0].top_reasons == ("pricing_page +30 (3x)", "senior_title +15 (fit)",
                                     "company_size_mid +10 (fit)")
    assert alerts[1].top_reasons[:2] == ("demo_request +30 (1x)", "pricing_page +30 (3x)")
    assert (alerts[1].score_total, alerts[1].scores_by_group) == (
        121.0, {"fit": 40.0, "engagement": 81.0, "product": 0.0})
