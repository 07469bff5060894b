"""The assign stage: owners by weight, SLAs, acknowledgements, escalations, and the wire
messages it sends."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from pipeline.core.engine import apply
from pipeline.core.routing import RoutingRules
from pipeline.metrics.registry import Metrics
from pipeline.models.outputs import Escalation, LeadAssignment, RoutingAlert
from pipeline.settings import Topics
from pipeline.stream.codec import (
    AckCommand,
    AlertCommand,
    OwnerUpdate,
    SlaTick,
    decode_assign,
    decode_leads_line,
    unpack,
)
from pipeline.stream.keys import partition_for
from pipeline.stream.stages.assign import assign_batch, assign_stage, sla_ticks
from pipeline.stream.stages.records import TeamRecord
from pipeline.stream.stages.score import plan
from tests.support.stages import DEST, ROUTING, RULES, alert


def test_assign_spreads_by_weight_acks_stop_sla_and_lapsed_alerts_escalate() -> None:
    table: dict[str, Any] = {}
    res = assign_batch([("sales", alert(i, 1000)) for i in range(6)], table.get, ROUTING)
    table.update(res.writes)
    placed = [e for e in res.emitted if e.role == "team"]
    owners = [e.body["owner"] for e in placed]
    assert owners.count("r1") == 4 and owners.count("r2") == 2
    assert all(e.body["sla_seconds"] == 300 for e in placed)
    # a0 acknowledged, a1 contacted (no alert id: by lead), the rest lapse
    res = assign_batch([
        ("sales", AckCommand("u0", "a0", 61_000)),
        ("sales", AckCommand("u1", None, 121_000)),
    ], table.get, ROUTING)
    table.update(res.writes)
    assert res.speed_to_lead == [("sales", "instant", 60.0), ("sales", "instant", 120.0)]
    assert not TeamRecord.from_stored(table["sales"]).overdue(300_000)
    assert TeamRecord.from_stored(table["sales"]).overdue(301_000)
    res = assign_batch([("sales", SlaTick(301_000))], table.get, ROUTING)
    table.update(res.writes)
    esc = [e for e in res.emitted if e.role == "escalations"]
    again = [e for e in res.emitted if e.role == "team"]
    assert sorted(e.body["alert_id"] for e in esc) == ["a2", "a3", "a4", "a5"]
    assert all(e.body["from_owner"] != e.body["to_owner"] for e in esc)
    assert all(e.body["reassigned"] for e in again)
    assert res.breaches == [("sales", "instant")] * 4
    # a replayed alert request is not assigned twice
    res = assign_batch([("sales", alert(3, 1000))], table.get, ROUTING)
    assert res.emitted == []


def test_the_sla_of_a_late_trigger_runs_from_when_it_was_routed() -> None:
    table: dict[str, Any] = {}
    late = replace(alert(0, 1000), routed_ms=10_000_000)  # a trigger from long before
    res = assign_batch([("sales", late)], table.get, ROUTING)
    table.update(res.writes)
    assert res.emitted[0].body["due_at"] == "1970-01-01T02:51:40.000+00:00"  # 10,000 s + 300 s
    assert not TeamRecord.from_stored(table["sales"]).overdue(10_000_000 + 299_999)
    res = assign_batch([("sales", SlaTick(301_000))], table.get, ROUTING)
    assert res.emitted == []
    assert TeamRecord.from_stored(table["sales"]).overdue(10_300_000)


def test_an_alert_nobody_acknowledges_escalates_once_per_rep_then_stops() -> None:
    table: dict[str, Any] = {}
    res = assign_batch([("sales", alert(0, 1000))], table.get, ROUTING)
    table.update(res.writes)
    assert res.emitted[0].body["owner"] == "r1"
    # r1 lets it lapse: reassigned to r2
    res = assign_batch([("sales", SlaTick(301_000))], table.get, ROUTING)
    table.update(res.writes)
    esc = [e.body for e in res.emitted if e.role == "escalations"]
    assert [(e["from_owner"], e["to_owner"]) for e in esc] == [("r1", "r2")]
    assert TeamRecord.from_stored(table["sales"]).overdue(601_000)
    # r2 lets it lapse too: one last escalation, unowned, and the timer stops
    res = assign_batch([("sales", SlaTick(601_000))], table.get, ROUTING)
    table.update(res.writes)
    esc = [e.body for e in res.emitted if e.role == "escalations"]
    team = [e.body for e in res.emitted if e.role == "team"]
    assert [(e["from_owner"], e["to_owner"]) for e in esc] == [("r2", None)]
    assert "no rep of team sales left" in esc[0]["reason"]
    assert team[0]["owner"] is None and team[0]["due_at"] is None
    assert table["sales"]["pending"] == {}
    assert not TeamRecord.from_stored(table["sales"]).overdue(10**12)
    res = assign_batch([("sales", SlaTick(901_000))], table.get, ROUTING)
    assert res.emitted == [] and res.breaches == []


def test_alert_from_the_core_becomes_a_valid_wire_alert_with_audit_trail() -> None:
    from pipeline.core.event import Event
    from pipeline.models.outputs import Escalation, RoutingAlert

    ident = Event(message_id="i1", lead_id="u1", type="identify", timestamp_ms=1_767_225_500_000,
                  user_id="u1", traits={"email": "a@globex.com", "country": "US",
                                        "employees": 5000, "title": "VP Sales"})
    demo = Event(message_id="d1", lead_id="u1", type="track", timestamp_ms=1_767_225_600_000,
                 name="Demo Requested", user_id="u1")
    r1 = apply(None, ident, RULES)
    r2 = apply(r1.state, demo, RULES)
    traits = {"u1": dict(ident.traits)}
    p = plan([*r1.outputs, *r2.outputs], traits, [ident, demo], {}, RULES.routing, Topics(),
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
    res = assign_batch([(out.team, SlaTick(1_767_225_600_000 + 301_000))],
                       table.get, RULES.routing)
    esc = Escalation.model_validate(next(e.body for e in res.emitted if e.role == "escalations"))
    again = RoutingAlert.model_validate(next(e.body for e in res.emitted if e.role == "team"))
    assert (esc.from_owner, esc.to_owner) == ("rep-erin", "rep-omar")
    assert again.reassigned and again.owner == "rep-omar"


def test_a_command_for_a_team_the_rules_no_longer_have_goes_to_the_catch_all_team() -> None:
    routing = RoutingRules.model_validate({"sla": {"instant": "5m"}, "teams": [
        {"name": "emea", "match": {"countries": ["DE"]}, "reps": [{"id": "m1"}]},
        {"name": "sales", "reps": [{"id": "s1"}]},
    ]})
    # "apac" was a team when the alert was planned; the rules changed since. The alert
    # must stay visible: the catch-all team (the last one, sales) takes it, not the first.
    res = assign_batch([("apac", alert(0, 1000))], {}.get, routing)
    [placed] = [e for e in res.emitted if e.role == "team"]
    assert (placed.team, placed.body["team"], placed.body["owner"]) == ("sales", "sales", "s1")
    assert set(res.writes) == {"sales"}
    # 1000 ms + the 5 min SLA of an instant alert
    assert res.writes["sales"]["pending"]["a0"]["due_ms"] == 301_000


def _wire_alert(i: int, at: int) -> AlertCommand:
    """`alert` with every field the routing topic's message needs."""
    cmd = alert(i, at)
    return replace(cmd, alert={
        **cmd.alert, "temperature": "hot", "triggered_at": "1970-01-01T00:00:01.000+00:00",
        "trigger": {"rule": "demo", "message_id": f"m{i}"},
        "scores": {"total": 90.0, "fit": 10.0, "engagement": 80.0, "product": 0.0}})


def test_the_stage_sends_wire_alerts_owners_assignments_and_escalations() -> None:
    table: dict[str, Any] = {}
    out = assign_stage([("sales", _wire_alert(0, 1000))], table.get, ROUTING, DEST)
    topics = sorted(s.topic for s in out.sends)
    assert topics == ["leads.assignments", "lf-leads", "routing.sales"]
    by = {s.topic: s for s in out.sends}
    wire = RoutingAlert.model_validate_json(by["routing.sales"].value)
    assert (wire.owner, wire.team, by["routing.sales"].key) == ("r1", "sales", b"u0")
    assert LeadAssignment.model_validate_json(by["leads.assignments"].value).owner == "r1"
    # the owner goes back to the lead, on the lead's partition of the leads topic
    [line] = unpack(by["lf-leads"].value)
    assert decode_leads_line(line, None) == OwnerUpdate("u0", "r1", "sales", "a0")
    assert by["lf-leads"].partition == partition_for(b"u0", 4)
    assert out.alerts == (("sales", "instant", 1000),)
    table.update(out.writes)
    # the SLA timer asks for a tick only once the alert is overdue
    items = [(b"sales", table["sales"]), (b"idle", None)]
    assert sla_ticks(items, 300_000, DEST) == ()
    [tick] = sla_ticks(items, 301_000, DEST)
    assert (tick.topic, tick.key, orjson.loads(tick.value)) == (
        "lf-assign", b"sales", {"op": "tick", "now_ms": 301_000})
    out = assign_stage([("sales", decode_assign(tick.value))], table.get, ROUTING, DEST)
    esc = [s for s in out.sends if s.topic == "routing.escalations"]
    assert [Escalation.model_validate_json(s.value).to_owner for s in esc] == ["r2"]
    assert out.breaches == (("sales", "instant"),)
    reg = CollectorRegistry()
    out.observe(Metrics(reg, teams={"sales"}), 302.0)
    assert reg.get_sample_value("leadflow_sla_breaches_total",
                                {"team": "sales", "kind": "instant"}) == 1
