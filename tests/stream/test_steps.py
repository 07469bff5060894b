"""The batched stream steps on plain dicts: the same work the agents do, without Kafka."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from pipeline.core.engine import apply
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, StageMove
from pipeline.core.routing import RoutingRules
from pipeline.core.rules import load_default_rules
from pipeline.core.state import LeadState
from pipeline.models.events import parse_message
from pipeline.settings import Topics
from pipeline.simulator import generate
from pipeline.stream.dedup import SeenWindow
from pipeline.stream.steps import (
    RawMessage,
    assign_batch,
    ingest_batch,
    overdue,
    score_batch,
    stitch_batch,
)

RULES = load_default_rules()
SOURCES = {"events.web": "web", "events.email": "email", "events.product": "product",
           "events.crm": "crm"}
TOPIC = {v: k for k, v in SOURCES.items()}


def raw(i: int, value: bytes | None, topic: str = "events.web") -> RawMessage:
    return RawMessage(topic=topic, partition=0, offset=i, timestamp_ms=1_767_225_600_000 + i,
                      key=b"k", value=value)


def run_pipeline(messages: list[RawMessage], batch: int) -> tuple[list[Any], dict[str, Any]]:
    """Ingest -> stitch -> score in batches of `batch`, with dict tables."""
    identity: dict[str, Any] = {}
    leads: dict[str, Any] = {}
    outputs: list[Any] = []
    for i in range(0, len(messages), batch):
        ing = ingest_batch(messages[i:i + batch], SOURCES, max_bytes=65536,
                           max_future_skew_ms=10**12)
        st = stitch_batch(ing.events, identity.get)
        identity.update(st.writes)
        sc = score_batch(st.forward, leads.get, RULES, dedup_retention_ms=7 * 86_400_000)
        leads.update(sc.writes)
        outputs.extend(sc.outputs)
    return outputs, leads


def test_ingest_rejects_with_reasons_and_keeps_order() -> None:
    good = orjson.dumps({"type": "page", "messageId": "m1", "anonymousId": "a",
                         "timestamp": "2026-01-01T00:00:00Z"})
    res = ingest_batch([raw(0, b"{"), raw(1, good), raw(2, None), raw(3, b"x" * 70_000)],
                       SOURCES, max_bytes=65536, max_future_skew_ms=300_000)
    assert [e.message_id for e in res.events] == ["m1"]
    assert [(r.message.offset, r.reason) for r in res.rejected] == [
        (0, "bad_json"), (2, "empty"), (3, "oversize")]


def test_batched_results_equal_per_event_results_and_offline_core() -> None:
    msgs = [raw(i, m.value(), TOPIC[m.source]) for i, m in enumerate(generate(300, seed=3))]
    out1, leads1 = run_pipeline(msgs, batch=1)
    out500, leads500 = run_pipeline(msgs, batch=500)
    def per_lead(outs: list[Any]) -> dict[str, list[dict[str, Any]]]:
        # batches group work by lead: the order that must hold is each lead's own
        got: dict[str, list[dict[str, Any]]] = {}
        for o in outs:
            got.setdefault(o.lead_id, []).append(o.to_dict())
        return got

    assert per_lead(out1) == per_lead(out500)
    assert leads1 == leads500
    # offline: stitch by hand and fold `apply` per lead in message order
    gen = list(generate(300, seed=3))
    users = {m.body["anonymousId"]: m.body["userId"] for m in gen
             if m.body.get("userId") and m.body.get("anonymousId")}
    states: dict[str, LeadState] = {}
    folded: dict[str, list[dict[str, Any]]] = {}
    ids: dict[str, list[tuple[str, int]]] = {}
    for m in gen:
        lead = m.body.get("userId") or users.get(m.body.get("anonymousId", ""))
        if lead is None:
            continue  # never identified: stays in the identity buffer
        e = replace(parse_message(m.value(), source=m.source), lead_id=lead)
        res = apply(states.get(lead), e, RULES)
        states[lead] = res.state
        folded.setdefault(lead, []).extend(o.to_dict() for o in res.outputs)
        ids.setdefault(lead, []).append((e.message_id, e.timestamp_ms))
    assert set(leads1) == set(states)  # only identified visitors become leads
    assert per_lead(out1) == {k: v for k, v in folded.items() if v}
    for lead, state in states.items():
        stored = leads1[lead]
        # The table keeps the dedup window beside the state (hashed), not in it.
        assert {**stored["s"], "seen": None} == {**state.to_dict(), "seen": None}, lead
        window = SeenWindow(stored["seen"], retention_ms=7 * 86_400_000)
        assert all(window.add(mid, ts) is False for mid, ts in ids[lead]), lead
    moves = [o for o in out1 if isinstance(o, StageMove)]
    assert len(moves) > 50 and any(o.to_stage == "opportunity" for o in moves)
    assert any(isinstance(o, AlertTrigger) for o in out1)


def test_redelivered_batch_changes_nothing_and_emits_nothing() -> None:
    msgs = [raw(i, m.value(), TOPIC[m.source]) for i, m in enumerate(generate(100, seed=5))]
    _, leads = run_pipeline(msgs, batch=200)
    ing = ingest_batch(msgs, SOURCES, max_bytes=65536, max_future_skew_ms=10**12)
    # the identity stage already flushed; redeliver straight to the score stage
    events = [e for e in ing.events if e.user_id]
    from dataclasses import replace

    again = score_batch([replace(e, lead_id=e.user_id or "") for e in events], leads.get,
                        RULES, dedup_retention_ms=7 * 86_400_000)
    assert again.outputs == [] and again.writes == {}
    assert again.duplicates == len(events)


def test_plan_maps_outputs_to_topics_and_assign_commands() -> None:
    from pipeline.core.event import Event
    from pipeline.stream import emit

    e = Event(message_id="d1", lead_id="u1", type="track", timestamp_ms=1_767_225_600_000,
              name="Demo Requested", user_id="u1")
    ident = Event(message_id="i1", lead_id="u1", type="identify", timestamp_ms=1_767_225_500_000,
                  user_id="u1", traits={"email": "a@stark.de", "country": "DE",
                                        "employees": 50})
    r1 = apply(None, ident, RULES)
    r2 = apply(r1.state, e, RULES)
    outs = [*r1.outputs, *r2.outputs]
    traits = {"u1": {"email": "a@stark.de", "country": "DE", "employees": 50}}
    p = emit.plan(outs, traits, [ident, e], {}, RULES.routing, Topics(),
                  free_mail=RULES.free_email)
    # the move to mql comes with its attribution (the lead had no touch: none credited)
    assert {t for t, _, _ in p.sends} == {"leads.stage-changes", "leads.attribution"}
    assert [(team, c["op"], c["alert"]["kind"]) for team, c in p.assign] == [
        ("emea", "alert", "instant")]
    alert = p.assign[0][1]["alert"]
    assert alert["domain"] == "stark.de" and alert["lead"]["country"] == "DE"
    first = orjson.loads(p.sends[0][2])
    assert first["lead_id"] == "u1" and first["status"] == "applied"


ROUTING = RoutingRules.model_validate({
    "sla": {"instant": "5m"},
    "teams": [{"name": "sales", "reps": [{"id": "r1", "capacity": 2}, {"id": "r2"}]}],
})


def _alert(i: int, at: int) -> dict[str, Any]:
    return {"op": "alert", "alert": {"alert_id": f"a{i}", "lead_id": f"u{i}", "kind": "instant",
                                     "triggered_ms": at, "domain": None}}


def test_assign_spreads_by_weight_acks_stop_sla_and_lapsed_alerts_escalate() -> None:
    table: dict[str, Any] = {}
    res = assign_batch([("sales", _alert(i, 1000)) for i in range(6)], table.get, ROUTING)
    table.update(res.writes)
    placed = [e for e in res.emitted if e.role == "team"]
    owners = [e.body["owner"] for e in placed]
    assert owners.count("r1") == 4 and owners.count("r2") == 2
    assert all(e.body["sla_seconds"] == 300 for e in placed)
    # a0 acknowledged, a1 contacted (no alert id: by lead), the rest lapse
    res = assign_batch([
        ("sales", {"op": "ack", "lead_id": "u0", "alert_id": "a0", "at_ms": 61_000}),
        ("sales", {"op": "ack", "lead_id": "u1", "alert_id": None, "at_ms": 121_000}),
    ], table.get, ROUTING)
    table.update(res.writes)
    assert res.speed_to_lead == [("sales", "instant", 60.0), ("sales", "instant", 120.0)]
    assert not overdue(table["sales"], 300_000)
    assert overdue(table["sales"], 301_000)
    res = assign_batch([("sales", {"op": "tick", "now_ms": 301_000})], table.get, ROUTING)
    table.update(res.writes)
    esc = [e for e in res.emitted if e.role == "escalations"]
    again = [e for e in res.emitted if e.role == "team"]
    assert sorted(e.body["alert_id"] for e in esc) == ["a2", "a3", "a4", "a5"]
    assert all(e.body["from_owner"] != e.body["to_owner"] for e in esc)
    assert all(e.body["reassigned"] for e in again)
    assert res.breaches == [("sales", "instant")] * 4
    # a replayed alert request is not assigned twice
    res = assign_batch([("sales", _alert(3, 1000))], table.get, ROUTING)
    assert res.emitted == []


def test_the_sla_of_a_late_trigger_runs_from_when_it_was_routed() -> None:
    table: dict[str, Any] = {}
    late = {**_alert(0, 1000), "routed_ms": 10_000_000}  # a trigger from long before
    res = assign_batch([("sales", late)], table.get, ROUTING)
    table.update(res.writes)
    assert res.emitted[0].body["due_at"] == "1970-01-01T02:51:40.000+00:00"  # 10,000 s + 300 s
    assert not overdue(table["sales"], 10_000_000 + 299_999)
    res = assign_batch([("sales", {"op": "tick", "now_ms": 301_000})], table.get, ROUTING)
    assert res.emitted == []
    assert overdue(table["sales"], 10_300_000)


def test_an_alert_nobody_acknowledges_escalates_once_per_rep_then_stops() -> None:
    table: dict[str, Any] = {}
    res = assign_batch([("sales", _alert(0, 1000))], table.get, ROUTING)
    table.update(res.writes)
    assert res.emitted[0].body["owner"] == "r1"
    # r1 lets it lapse: reassigned to r2
    res = assign_batch([("sales", {"op": "tick", "now_ms": 301_000})], table.get, ROUTING)
    table.update(res.writes)
    esc = [e.body for e in res.emitted if e.role == "escalations"]
    assert [(e["from_owner"], e["to_owner"]) for e in esc] == [("r1", "r2")]
    assert overdue(table["sales"], 601_000)
    # r2 lets it lapse too: one last escalation, unowned, and the timer stops
    res = assign_batch([("sales", {"op": "tick", "now_ms": 601_000})], table.get, ROUTING)
    table.update(res.writes)
    esc = [e.body for e in res.emitted if e.role == "escalations"]
    team = [e.body for e in res.emitted if e.role == "team"]
    assert [(e["from_owner"], e["to_owner"]) for e in esc] == [("r2", None)]
    assert "no rep of team sales left" in esc[0]["reason"]
    assert team[0]["owner"] is None and team[0]["due_at"] is None
    assert table["sales"]["pending"] == {}
    assert not overdue(table["sales"], 10**12)
    res = assign_batch([("sales", {"op": "tick", "now_ms": 901_000})], table.get, ROUTING)
    assert res.emitted == [] and res.breaches == []


def test_alert_from_the_core_becomes_a_valid_wire_alert_with_audit_trail() -> None:
    from pipeline.core.event import Event
    from pipeline.models.outputs import Escalation, RoutingAlert
    from pipeline.stream import emit

    ident = Event(message_id="i1", lead_id="u1", type="identify", timestamp_ms=1_767_225_500_000,
                  user_id="u1", traits={"email": "a@globex.com", "country": "US",
                                        "employees": 5000, "title": "VP Sales"})
    demo = Event(message_id="d1", lead_id="u1", type="track", timestamp_ms=1_767_225_600_000,
                 name="Demo Requested", user_id="u1")
    r1 = apply(None, ident, RULES)
    r2 = apply(r1.state, demo, RULES)
    traits = {"u1": dict(ident.traits)}
    p = emit.plan([*r1.outputs, *r2.outputs], traits, [ident, demo], {}, RULES.routing, Topics(),
                  free_mail=RULES.free_email)
    table: dict[str, Any] = {}
    res = assign_batch(p.assign, table.get, RULES.routing)
    table.update(res.writes)
    (out,) = [e for e in res.emitted if e.role == "team"]
    alert = RoutingAlert.model_validate(out.body)
    assert alert.team == "enterprise" and alert.owner == "rep-erin"
    assert alert.assignment is not None
    assert "min_employees" in alert.assignment.reason or "employees" in alert.assignment.reason
    assert alert.sla_seconds == 300 and alert.lead.email_domain == "globex.com"
    assert alert.top_reasons and alert.top_reasons[0].points > 0
    # the SLA lapses: a valid escalation and a reassignment to the other rep
    res = assign_batch([(out.team, {"op": "tick", "now_ms": 1_767_225_600_000 + 301_000})],
                       table.get, RULES.routing)
    esc = Escalation.model_validate(next(e.body for e in res.emitted if e.role == "escalations"))
    again = RoutingAlert.model_validate(next(e.body for e in res.emitted if e.role == "team"))
    assert (esc.from_owner, esc.to_owner) == ("rep-erin", "rep-omar")
    assert again.reassigned and again.owner == "rep-omar"


def test_decay_tick_recycles_a_quiet_mql_and_keeps_the_route() -> None:
    from pipeline.core.event import Event

    t0 = 1_767_225_600_000
    # no fit to speak of (fit never decays): only the demo request's engagement counts
    evs = [Event(message_id="i", lead_id="u1", type="identify", timestamp_ms=t0, user_id="u1",
                 traits={"email": "someone@gmail.com"}),
           Event(message_id="d", lead_id="u1", type="track", timestamp_ms=t0 + 9,
                 name="Demo Requested", user_id="u1")]
    table: dict[str, Any] = {}
    res = score_batch(evs, table.get, RULES, dedup_retention_ms=86_400_000)
    table.update(res.writes)
    stage = table["u1"]["s"]["stage"]
    assert stage in ("mql", "sql"), stage
    table["u1"]["route"] = {"team": "sales", "alert_id": "x"}
    # a tick a day later: nothing yet; 120 days later: decayed below the recycle line
    res = score_batch([], table.get, RULES, dedup_retention_ms=86_400_000,
                      ticks={"u1": t0 + 86_400_000})
    assert [o for o in res.outputs if isinstance(o, StageMove)] == []
    res = score_batch([], table.get, RULES, dedup_retention_ms=86_400_000,
                      ticks={"u1": t0 + 120 * 86_400_000})
    moves = [(o.from_stage, o.to_stage, o.cause_rule) for o in res.outputs
             if isinstance(o, StageMove)]
    assert moves == [(stage, "recycled", "decay")]
    assert res.writes["u1"]["route"] == {"team": "sales", "alert_id": "x"}
    assert res.writes["u1"]["seen"] == table["u1"]["seen"]


def test_plan_scored_looks_up_only_the_routes_of_acknowledged_leads() -> None:
    from pipeline.core.event import Event
    from pipeline.stream import emit

    t0 = 1_767_225_600_000
    ack = Event(message_id="a1", lead_id="u1", type="track", timestamp_ms=t0, user_id="u1",
                name="Alert Acknowledged", properties={"alert_id": "x"})
    page = Event(message_id="p1", lead_id="u2", type="page", timestamp_ms=t0, user_id="u2")
    asked: list[str] = []

    def get(lead: str) -> dict[str, Any] | None:
        asked.append(lead)
        return {"route": {"team": "sales", "alert_id": "x"}} if lead == "u1" else None

    p = emit.plan_scored([], {}, [ack, page], get, RULES.routing, Topics(),
                  free_mail=RULES.free_email)
    assert asked == ["u1"]
    assert p.assign == [("sales", {"op": "ack", "lead_id": "u1", "alert_id": "x",
                                   "at_ms": t0, "event": "Alert Acknowledged"})]
    # A lead written in the batch is read from its write, not from the table.
    asked.clear()
    p = emit.plan_scored([], {"u1": {"route": {"team": "emea", "alert_id": "y"}}},
                         [ack], get, RULES.routing, Topics(),
                  free_mail=RULES.free_email)
    assert asked == [] and p.assign[0][0] == "emea"


def test_the_owner_chosen_by_assign_is_written_to_the_lead_and_published() -> None:
    from pipeline.models.outputs import LeadAssignment
    from pipeline.stream.leadview import lead_document

    leads: dict[str, Any] = {}
    ident = Event("m1", "u0", "identify", 1000, traits={"email": "a@b.com"}, user_id="u0")
    leads.update(score_batch([ident], leads.get, RULES, dedup_retention_ms=10**9).writes)
    table: dict[str, Any] = {}

    def owner_of(res: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        [own] = [e.body for e in res.emitted if e.role == "owner"]
        [asg] = [e.body for e in res.emitted if e.role == "assignment"]
        return own, asg

    res = assign_batch([("sales", _alert(0, 1000))], table.get, ROUTING)
    table.update(res.writes)
    own, asg = owner_of(res)
    assert own == {"owner": "r1", "team": "sales", "alert_id": "a0"}
    assert LeadAssignment.model_validate(asg).reassigned is False
    leads.update(score_batch([], leads.get, RULES, dedup_retention_ms=10**9,
                             owners={"u0": own}).writes)
    doc = lead_document("u0", leads["u0"], RULES)
    assert (doc["owner"], doc["team"], doc["last_alert_id"]) == ("r1", "sales", "a0")
    # the SLA lapses: the reassignment is written back too
    res = assign_batch([("sales", {"op": "tick", "now_ms": 301_000})], table.get, ROUTING)
    own, asg = owner_of(res)
    assert own["owner"] == "r2" and asg["reassigned"] is True
    leads.update(score_batch([], leads.get, RULES, dedup_retention_ms=10**9,
                             owners={"u0": own}).writes)
    assert lead_document("u0", leads["u0"], RULES)["owner"] == "r2"
    # later events keep the owner
    page = Event("m2", "u0", "page", 2000, url="https://x.com/pricing", user_id="u0")
    leads.update(score_batch([page], leads.get, RULES, dedup_retention_ms=10**9).writes)
    assert LeadState.from_dict(leads["u0"]["s"]).owner == "r2"


def test_a_command_for_a_team_the_rules_no_longer_have_goes_to_the_catch_all_team() -> None:
    routing = RoutingRules.model_validate({"sla": {"instant": "5m"}, "teams": [
        {"name": "emea", "match": {"countries": ["DE"]}, "reps": [{"id": "m1"}]},
        {"name": "sales", "reps": [{"id": "s1"}]},
    ]})
    # "apac" was a team when the alert was planned; the rules changed since. The alert
    # must stay visible: the catch-all team (the last one, sales) takes it, not the first.
    res = assign_batch([("apac", _alert(0, 1000))], {}.get, routing)
    [placed] = [e for e in res.emitted if e.role == "team"]
    assert (placed.team, placed.body["team"], placed.body["owner"]) == ("sales", "sales", "s1")
    assert set(res.writes) == {"sales"}
    # 1000 ms + the 5 min SLA of an instant alert
    assert res.writes["sales"]["pending"]["a0"]["due_ms"] == 301_000
