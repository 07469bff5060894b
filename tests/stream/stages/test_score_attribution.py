"""Attribution outputs on the wire: topic, key, touches, credit per model and channel, deals."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import orjson
import pytest

from pipeline.core.engine import apply_batch
from pipeline.core.event import Event
from pipeline.core.outputs import Attribution
from pipeline.core.rules import load_default_rules
from pipeline.settings import Topics
from pipeline.stream.stages import score as stage
from tests.support.schemas import check

RULES = load_default_rules()
T0 = 1_767_225_600_000
H = 3_600_000


def _ev(mid: str, h: int, typ: str = "track", **kw: Any) -> Event:
    for k in ("properties", "traits", "utm"):
        if k in kw:
            kw[k] = MappingProxyType(kw[k])
    return Event(mid, "u1", typ, T0 + h * H, user_id="u1", **kw)


JOURNEY = [
    _ev("p1", 0, "page", url="https://acme.io/?utm_source=linkedin&utm_medium=paid_social"
        "&utm_campaign=abm-q1"),
    _ev("i1", 1, "identify", traits={"email": "ann@corp.example"}),
    _ev("e1", 2, name="Email Link Clicked", utm={"source": "hubspot", "medium": "email"}),
    _ev("d1", 3, name="Demo Requested"),
    _ev("o1", 4, name="Opportunity Created", properties={"amount": 30000, "currency": "EUR"}),
    _ev("w1", 5, name="Deal Won", properties={"amount": "n/a"}),
]


def _plan() -> tuple[stage.Plan, list[Attribution]]:
    res = apply_batch(None, JOURNEY, RULES)
    p = stage.plan(res.outputs, {"u1": {"email": "ann@corp.example"}}, JOURNEY, {},
                  RULES.routing, Topics(), free_mail=RULES.free_email,
                  rules_version=RULES.version)
    return p, [o for o in res.outputs if isinstance(o, Attribution)]


def test_attributions_go_to_their_topic_keyed_by_lead_and_match_the_schema() -> None:
    p, atts = _plan()
    sent = [(k, orjson.loads(v)) for t, k, v in p.sends if t == "leads.attribution"]
    assert [m["stage"] for _, m in sent] == ["mql", "opportunity", "customer"]
    assert {k for k, _ in sent} == {b"u1"}
    assert p.attributions == atts
    for _, m in sent:
        check("lead-attribution.json", orjson.dumps(m))
    mql, opp, won = (m for _, m in sent)
    assert mql["attribution_id"] == "u1:mql:d1" and mql["rules_version"] == RULES.version
    assert [(t["channel"], t["campaign"], t["marks"]) for t in mql["touches"]] == [
        ("paid_social", "abm-q1", ["lead"]), ("email", None, ["mql"])]
    credits = {c["model"]: c for c in mql["credits"]}
    assert list(credits) == list(RULES.attribution_models)
    # two touches: U gives 50/50; W counts the first as the lead-creation touch too (0.6),
    # the last 0.3, and spreads 0.1 over the three key positions
    assert credits["u_shaped"]["channels"] == pytest.approx({"paid_social": 0.5, "email": 0.5})
    assert credits["w_shaped"]["channels"] == pytest.approx(
        {"paid_social": 0.6 + 0.2 / 3, "email": 0.3 + 0.1 / 3})
    assert mql["deal"] is None
    assert opp["deal"] == {"kind": "pipeline", "amount": 30000.0, "currency": "EUR",
                           "amount_issue": None}
    assert won["deal"] == {"kind": "revenue", "amount": None, "currency": None,
                           "amount_issue": "not_a_number"}
    assert won["cause"] == {"rule": "crm:Deal Won", "message_id": "w1", "event_name": None}


def test_topic_name_is_a_setting() -> None:
    res = apply_batch(None, JOURNEY[:4], RULES)
    p = stage.plan(res.outputs, {}, JOURNEY[:4], {}, RULES.routing,
                  Topics(attribution="mkt.attribution"), free_mail=RULES.free_email)
    assert "mkt.attribution" in {t for t, _, _ in p.sends}


def test_nurture_changes_go_to_their_topic_and_match_the_schema() -> None:
    warm = [
        _ev("i1", 0, "identify", traits={"email": "ann@corp.example"}),
        *(_ev(f"p{i}", 1, "page", url="https://acme.io/pricing") for i in range(3)),
        _ev("c1", 2, name="Document Downloaded"),
        *(_ev(f"b{i}", 3, "page", url=f"https://acme.io/blog/{i}") for i in range(5)),
        _ev("cmp", 4, "page", url="https://acme.io/compare/rival"),
        _ev("a1", 5, name="Lead Accepted"),
        _ev("r1", 6, name="Lead Rejected", properties={"reason": "bad_timing"}),
    ]
    res = apply_batch(None, warm, RULES)
    p = stage.plan(res.outputs, {}, warm, {}, RULES.routing, Topics(),
                  free_mail=RULES.free_email, rules_version=RULES.version)
    sent = [orjson.loads(v) for t, _, v in p.sends if t == "leads.nurture"]
    for m in sent:
        check("lead-nurture.json", orjson.dumps(m))
    assert [(m["action"], m["reason"], m["stage"], m["cause"]["rule"]) for m in sent] == [
        ("enroll", "warm", "mql", "crossed mql"),
        ("exit", "sales_accepted", "sal", "crm:Lead Accepted"),
        ("enroll", "recycled", "recycled", "crm:Lead Rejected")]
    assert sent[1]["nurture_id"] == "u1:exit:a1"
    # the enroll names what the lead cared about most; an exit names nothing
    assert sent[0]["interest"] == "pricing_page" and sent[1]["interest"] is None
