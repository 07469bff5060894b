"""Nurture that starts and stops: enroll warm and recycled leads, exit when sales takes over."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from pipeline.core.engine import apply_batch
from pipeline.core.event import Event
from pipeline.core.outputs import NurtureChange
from pipeline.core.rules import parse_rules
from pipeline.core.state import LeadState

RULES = parse_rules("""\
thresholds: {mql: 10, hot: 50, recycle: 5, pql: 100}
engagement:
  - {id: view, match: {type: page}, points: 6}
  - {id: demo, match: {name: Demo Requested}, points: 1, trigger: {hot: true}}
""")
T0 = 1_767_225_600_000


class Lead:
    """One lead's events in order, collecting its nurture messages as (action, reason)."""

    def __init__(self) -> None:
        self.state: LeadState | None = None
        self.n = 0

    def send(self, typ: str = "track", name: str = "", **kw: Any) -> list[tuple[str, str]]:
        self.n += 1
        if "properties" in kw:
            kw["properties"] = MappingProxyType(kw["properties"])
        e = Event(f"m{self.n}", "u1", typ, T0 + self.n * 1000, name=name,  # type: ignore[arg-type]
                  user_id="u1", **kw)
        res = apply_batch(self.state, [e], RULES)
        self.state = LeadState.from_dict(res.state.to_dict())
        return [(o.action, o.reason) for o in res.outputs if isinstance(o, NurtureChange)]


def warm_lead() -> Lead:
    lead = Lead()
    assert lead.send("identify", traits=MappingProxyType({"email": "a@corp.example"})) == []
    assert lead.send("page") == []
    assert lead.send("page") == [("enroll", "warm")]  # 12 >= mql 10, below hot: warm
    assert lead.state is not None and lead.state.nurture == "warm"
    return lead


def test_enroll_names_the_lead_s_interest() -> None:
    lead = Lead()
    lead.send("identify", traits=MappingProxyType({"email": "a@corp.example"}))
    lead.send("page")
    e = Event("x1", "u1", "page", T0 + 99_000, user_id="u1")
    (change,) = [o for o in apply_batch(lead.state, [e], RULES).outputs
                 if isinstance(o, NurtureChange)]
    assert (change.action, change.interest) == ("enroll", "view")  # the page rule, 12 points


def test_accepted_exits_and_recycled_re_enrolls() -> None:
    lead = warm_lead()
    assert lead.send(name="Lead Accepted") == [("exit", "sales_accepted")]
    assert lead.state is not None and lead.state.nurture is None
    assert lead.send(name="Lead Rejected", properties={"reason": "bad_timing"}) == [
        ("enroll", "recycled")]
    # a hand-raise puts the lead in a rep's queue: it leaves nurture at once
    assert lead.send(name="Demo Requested") == [("exit", "sales_alerted")]


@pytest.mark.parametrize(("event", "reason"), [
    ("Opportunity Created", "opportunity_opened"),
    ("Lead Disqualified", "disqualified"),
    ("Lead Qualified", "qualified"),
])
def test_sales_moves_exit(event: str, reason: str) -> None:
    lead = warm_lead()
    assert lead.send(name=event) == [("exit", reason)]


def test_unsubscribed_exits_and_is_never_enrolled_again() -> None:
    lead = warm_lead()
    assert lead.send("track", "Unsubscribed") == [("exit", "unsubscribed")]
    assert lead.send(name="Lead Accepted") == []  # not in nurture: nothing to stop
    assert lead.send(name="Lead Rejected") == []  # recycled, but opted out
    assert lead.state is not None and lead.state.opted_out and lead.state.nurture is None


def test_each_message_says_why() -> None:
    lead = warm_lead()
    e = Event("x1", "u1", "track", T0 + 99_000, name="Lead Accepted", user_id="u1")
    (change,) = [o for o in apply_batch(lead.state, [e], RULES).outputs
                 if isinstance(o, NurtureChange)]
    assert (change.action, change.reason, change.stage, change.detail, change.message_id) == (
        "exit", "sales_accepted", "sal", "crm:Lead Accepted", "x1")


def test_a_hot_lead_is_never_enrolled() -> None:
    lead = Lead()
    lead.send("identify", traits=MappingProxyType({"email": "a@corp.example"}))
    assert lead.send(name="Demo Requested") == []  # hot at once: an alert, no nurture
    assert lead.state is not None and lead.state.nurture is None


def test_old_states_load_outside_nurture() -> None:
    lead = warm_lead()
    assert lead.state is not None
    old = lead.state.to_dict()
    del old["nurture"], old["opted_out"]
    s = LeadState.from_dict(old)
    assert (s.nurture, s.opted_out) == (None, False)
