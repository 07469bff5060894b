"""The score stage: the core over batches of leads, dedup, decay ticks, owners, and what it
sends (stage changes, hand-offs, assign commands)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from pipeline.core.engine import apply, apply_batch, tick
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, ScoreChange, StageMove
from pipeline.core.state import LeadState
from pipeline.metrics.registry import Metrics
from pipeline.models.events import parse_message
from pipeline.models.outputs import ScoreChangeMessage
from pipeline.settings import Topics
from pipeline.simulator import generate
from pipeline.stream.codec import (
    AckCommand,
    AlertCommand,
    OwnerUpdate,
    SlaTick,
    TickRequest,
    decode_leads_line,
    dumps,
    unpack,
)
from pipeline.stream.dedup import SeenWindow
from pipeline.stream.keys import partition_for
from pipeline.stream.stages.assign import assign_batch
from pipeline.stream.stages.ingest import ingest_batch
from pipeline.stream.stages.records import LeadRecord, Route
from pipeline.stream.stages.score import (
    plan,
    plan_scored,
    score,
    score_batch,
    tick_due,
    tick_requests,
)
from tests.support.schemas import check
from tests.support.stages import DEST, ROUTING, RULES, SOURCES, TOPIC, alert, raw, run_pipeline


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

    e = Event(message_id="d1", lead_id="u1", type="track", timestamp_ms=1_767_225_600_000,
              name="Demo Requested", user_id="u1")
    ident = Event(message_id="i1", lead_id="u1", type="identify", timestamp_ms=1_767_225_500_000,
                  user_id="u1", traits={"email": "a@stark.de", "country": "DE",
                                        "employees": 50})
    r1 = apply(None, ident, RULES)
    r2 = apply(r1.state, e, RULES)
    outs = [*r1.outputs, *r2.outputs]
    traits = {"u1": {"email": "a@stark.de", "country": "DE", "employees": 50}}
    p = plan(outs, traits, [ident, e], {}, RULES.routing, Topics(),
                  free_mail=RULES.free_email)
    # the move to mql comes with its attribution (the lead had no touch: none credited)
    assert {t for t, _, _ in p.sends} == {"leads.stage-changes", "leads.attribution"}
    [(team, cmd)] = p.assign
    assert isinstance(cmd, AlertCommand)
    assert (team, cmd.alert["kind"], cmd.routed_ms) == ("emea", "instant", None)
    alert = cmd.alert
    assert alert["domain"] == "stark.de" and alert["lead"]["country"] == "DE"
    first = orjson.loads(p.sends[0][2])
    assert first["lead_id"] == "u1" and first["status"] == "applied"


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

    t0 = 1_767_225_600_000
    ack = Event(message_id="a1", lead_id="u1", type="track", timestamp_ms=t0, user_id="u1",
                name="Alert Acknowledged", properties={"alert_id": "x"})
    page = Event(message_id="p1", lead_id="u2", type="page", timestamp_ms=t0, user_id="u2")
    asked: list[str] = []

    def get(lead: str) -> LeadRecord | None:
        asked.append(lead)
        return (LeadRecord(LeadState(lead), None, Route("sales", "x")) if lead == "u1"
                else None)

    p = plan_scored([], {}, [ack, page], get, RULES.routing, Topics(),
                    free_mail=RULES.free_email)
    assert asked == ["u1"]
    assert p.assign == [("sales", AckCommand("u1", "x", t0, "Alert Acknowledged"))]
    # A lead written in the batch is read from its write, not from the table.
    asked.clear()
    written = LeadRecord(apply(None, ack, RULES).state, None, Route("emea", "y"))
    p = plan_scored([], {"u1": written}, [ack], get, RULES.routing, Topics(),
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

    res = assign_batch([("sales", alert(0, 1000))], table.get, ROUTING)
    table.update(res.writes)
    own, asg = owner_of(res)
    assert own == {"owner": "r1", "team": "sales", "alert_id": "a0"}
    assert LeadAssignment.model_validate(asg).reassigned is False
    leads.update(score_batch([], leads.get, RULES, dedup_retention_ms=10**9,
                             owners={"u0": OwnerUpdate("u0", **own)}).writes)
    doc = lead_document("u0", leads["u0"], RULES)
    assert (doc["owner"], doc["team"], doc["last_alert_id"]) == ("r1", "sales", "a0")
    # the SLA lapses: the reassignment is written back too
    res = assign_batch([("sales", SlaTick(301_000))], table.get, ROUTING)
    own, asg = owner_of(res)
    assert own["owner"] == "r2" and asg["reassigned"] is True
    leads.update(score_batch([], leads.get, RULES, dedup_retention_ms=10**9,
                             owners={"u0": OwnerUpdate("u0", **own)}).writes)
    assert lead_document("u0", leads["u0"], RULES)["owner"] == "r2"
    # later events keep the owner
    page = Event("m2", "u0", "page", 2000, url="https://x.com/pricing", user_id="u0")
    leads.update(score_batch([page], leads.get, RULES, dedup_retention_ms=10**9).writes)
    assert LeadState.from_dict(leads["u0"]["s"]).owner == "r2"


def test_moves_are_counted_by_the_team_owning_the_lead() -> None:
    ident = Event("i1", "u1", "identify", 1_767_225_500_000, user_id="u1",
                  traits={"email": "a@stark.de", "country": "DE", "employees": 50})
    demo = Event("d1", "u1", "track", 1_767_225_600_000, name="Demo Requested", user_id="u1")
    table: dict[str, Any] = {}
    out = score([ident, demo], table.get, RULES, DEST, dedup_retention_ms=10**9, routed_ms=1)
    # no team before the assign stage's owner comes back
    assert {(m.to_stage, m.team) for m in out.moves} == {("lead", None), ("mql", None)}
    table.update(out.writes)
    table.update(score([OwnerUpdate("u1", "rep-1", "emea", "x")], table.get, RULES, DEST,
                       dedup_retention_ms=10**9, routed_ms=2).writes)
    accepted = Event("a1", "u1", "track", 1_767_225_700_000, name="Lead Accepted",
                     user_id="u1")
    out = score([accepted], table.get, RULES, DEST, dedup_retention_ms=10**9, routed_ms=3)
    assert [(m.from_stage, m.to_stage, m.team) for m in out.moves] == [("mql", "sal", "emea")]
    reg = CollectorRegistry()
    out.observe(Metrics(reg, teams=["emea"]), accepted.timestamp_ms / 1000)
    assert reg.get_sample_value("leadflow_team_stage_moves_total",
                                {"from_stage": "mql", "to_stage": "sal", "team": "emea"}) == 1


def test_the_stage_sends_changes_and_alert_commands_and_remembers_the_route() -> None:
    ident = Event("i1", "u1", "identify", 1_767_225_500_000, user_id="u1",
                  traits={"email": "a@stark.de", "country": "DE", "employees": 50})
    demo = Event("d1", "u1", "track", 1_767_225_600_000, name="Demo Requested", user_id="u1")
    table: dict[str, Any] = {}
    out = score([ident, demo], table.get, RULES, DEST, dedup_retention_ms=10**9,
                routed_ms=42)
    by_topic: dict[str, list[Any]] = {}
    for s in out.sends:
        by_topic.setdefault(s.topic, []).append(s)
    assert set(by_topic) == {"leads.stage-changes", "leads.attribution", "leads.score-changes",
                             "lf-assign"}
    assert all(s.key == b"u1" and s.partition is None for s in by_topic["leads.stage-changes"])
    # the move to mql is attributed, and counted by channel when observed
    [att] = by_topic["leads.attribution"]
    assert (att.key, orjson.loads(att.value)["stage"]) == (b"u1", "mql")
    assert [a.stage for a in out.attributions] == ["mql"]
    [cmd] = by_topic["lf-assign"]
    body = orjson.loads(cmd.value)
    assert (cmd.key, body["op"], body["routed_ms"]) == (b"emea", "alert", 42)
    assert out.writes["u1"].route == Route("emea", body["alert"]["alert_id"])
    assert [(m.from_stage, m.to_stage) for m in out.moves][:1] == [("visitor", "lead")]
    assert out.event_ms == (ident.timestamp_ms, demo.timestamp_ms)
    reg = CollectorRegistry()
    out.observe(Metrics(reg), demo.timestamp_ms / 1000 + 2)
    assert reg.get_sample_value("leadflow_events_scored_total") == 2
    # the owner the assign stage chose, as a typed line, lands in the lead's state
    table.update(out.writes)
    again = score([OwnerUpdate("u1", "rep-1", "emea", "x")], table.get, RULES, DEST,
                  dedup_retention_ms=10**9, routed_ms=43)
    assert again.sends == ()
    assert again.writes["u1"].state.owner == "rep-1"
    assert again.writes["u1"].route == Route("emea", "x")


def test_the_decay_dry_run_agrees_with_ticking_every_stored_record() -> None:
    msgs = [raw(i, m.value(), TOPIC[m.source]) for i, m in enumerate(generate(400, seed=11))]
    _, leads = run_pipeline(msgs, batch=100)
    latest = max(e.timestamp_ms for e in ingest_batch(msgs, SOURCES, max_bytes=65536,
                                                      max_future_skew_ms=10**12).events)
    for days in (1, 30, 200):
        now = latest + days * 86_400_000
        due = {lead for lead, rec in leads.items() if tick_due(dumps(rec), now, RULES)}
        expected = set()
        for lead, rec in leads.items():
            state = LeadState.from_dict(rec["s"])
            res = tick(state, now, RULES)
            if res.outputs or res.state.hot != state.hot:
                expected.add(lead)
        assert due == expected, days
    assert due  # 200 quiet days: some lead decays
    sends = tick_requests(sorted(k.encode() for k in due), now, DEST)
    lines = [decode_leads_line(line, None) for s in sends for line in unpack(s.value)]
    assert {line.lead_id for line in lines} == due
    assert all(isinstance(line, TickRequest) and line.at_ms == now for line in lines)
    for s in sends:  # each request on the partition of its lead
        assert {partition_for(decode_leads_line(line, None).lead_id.encode(), 4)
                for line in unpack(s.value)} == {s.partition}


def test_a_lead_record_is_stored_in_the_shape_the_table_and_lead_api_read() -> None:
    ident = Event("i1", "u1", "identify", 1000, user_id="u1",
                  traits={"email": "a@b.com", "title": "CTO"})
    [stored] = score_batch([ident], {}.get, RULES, dedup_retention_ms=10**9).writes.values()
    assert set(stored) == {"s", "seen"}  # no route until an alert or an owner sets one
    rec = LeadRecord.from_stored(orjson.loads(dumps(stored)))
    assert rec.state == LeadState.from_dict(stored["s"])
    assert rec.traits() == {"email": "a@b.com", "title": "CTO"}
    routed = replace(rec, route=Route("sales", "a1"))
    again = routed.to_stored()
    assert again["route"] == {"team": "sales", "alert_id": "a1"}
    assert again["s"]["seen"] == {}  # the window beside the state holds the ids
    assert LeadRecord.from_stored(orjson.loads(dumps(again))) == routed


def test_score_changes_go_to_their_topic_one_per_change_and_match_the_schema() -> None:
    ident = Event("i1", "u1", "identify", 1_767_225_500_000, user_id="u1",
                  traits={"email": "a@stark.de", "country": "DE", "employees": 50})
    page = Event("p1", "u1", "page", 1_767_225_600_000, user_id="u1",
                 url="https://acme.io/pricing")
    table: dict[str, Any] = {}
    out = score([ident, page], table.get, RULES, DEST, dedup_retention_ms=10**9, routed_ms=1)
    sent = [orjson.loads(s.value) for s in out.sends if s.topic == "leads.score-changes"]
    assert all(s.key == b"u1" for s in out.sends if s.topic == "leads.score-changes")
    for m in sent:
        check("score-change.json", orjson.dumps(m))
        ScoreChangeMessage.model_validate(m)
    # the same changes as the core's, in order, with the rules version and event time
    core = [c for c in apply_batch(None, [ident, page], RULES, ledger=True).outputs
            if isinstance(c, ScoreChange)]
    assert core, "the scenario changes scores"
    assert [(m["kind"], m["rule"], m["group"], m["delta"], m["scores"]["total"], m["message_id"],
             m["at_ms"], m["rules_version"]) for m in sent] == [
        (c.kind, c.rule, c.group, round(c.delta, 4), round(c.total, 2), c.message_id, c.at_ms,
         RULES.version) for c in core]
    assert {m["message_id"] for m in sent} == {"i1", "p1"}
    assert sent[-1]["change_id"] == f"u1:{core[-1].rule}:engagement:p1"
    assert sent[-1]["scores"] == {"total": round(core[-1].total, 2),
                                  "fit": round(core[-1].fit, 2),
                                  "engagement": round(core[-1].engagement, 2),
                                  "product": round(core[-1].product, 2)}
    # the lead keeps them for /history
    assert len(out.writes["u1"].state.changes) == len(core)


def test_the_decay_timer_sends_decay_as_a_change_without_a_message_id() -> None:
    page = Event("p1", "u1", "page", 1_767_225_600_000, user_id="u1",
                 url="https://acme.io/pricing")
    table: dict[str, Any] = {}
    table.update(score([page], table.get, RULES, DEST, dedup_retention_ms=10**9,
                       routed_ms=1).writes)
    before = table["u1"].state.engagement
    later = page.timestamp_ms + 120 * 86_400_000
    out = score([TickRequest("u1", later)], table.get, RULES, DEST, dedup_retention_ms=10**9,
                routed_ms=2)
    sent = [orjson.loads(s.value) for s in out.sends if s.topic == "leads.score-changes"]
    assert [(m["kind"], m["rule"], m["group"], m["message_id"], m["at_ms"]) for m in sent] == [
        ("decay", "decay", "engagement", None, later)]
    after = out.writes["u1"].state.engagement
    assert after < before and sent[0]["delta"] == round(after - before, 4) < 0
    assert sent[0]["change_id"] == f"u1:decay:engagement:{later}"


def test_ledger_off_sends_no_score_change_and_keeps_none() -> None:
    ident = Event("i1", "u1", "identify", 1_767_225_500_000, user_id="u1",
                  traits={"email": "a@stark.de", "country": "DE", "employees": 50})
    page = Event("p1", "u1", "page", 1_767_225_600_000, user_id="u1",
                 url="https://acme.io/pricing")
    off = replace(DEST, score_ledger=False)
    on_out = score([ident, page], {}.get, RULES, DEST, dedup_retention_ms=10**9, routed_ms=1)
    off_out = score([ident, page], {}.get, RULES, off, dedup_retention_ms=10**9, routed_ms=1)
    assert [s for s in off_out.sends if s.topic == "leads.score-changes"] == []
    assert off_out.writes["u1"].state.changes == ()
    assert [s for s in on_out.sends if s.topic != "leads.score-changes"] == list(off_out.sends)


def test_the_score_changes_topic_is_a_setting() -> None:
    c = ScoreChange("u1", "event", "pricing_page", "engagement", 10.0, 0.0, 10.0, 0.0, 10.0,
                    1_767_225_600_000, "m1")
    p = plan([c], {}, [], {}, ROUTING, Topics(score_changes="mkt.ledger"), free_mail=frozenset(),
             rules_version="1-abc")
    [(topic, key, value)] = p.sends
    assert (topic, key) == ("mkt.ledger", b"u1")
    assert orjson.loads(value)["rules_version"] == "1-abc"
