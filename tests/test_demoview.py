"""The demo's live summary: what it counts from the outputs and how it says it."""

from __future__ import annotations

from rich.console import Console

from pipeline.demoview import LiveSummary, WorkerStatus


def _view() -> LiveSummary:
    return LiveSummary("leads.stage-changes", "events.deadletter", "routing.")


def _move(lead: str, src: str, dst: str, **extra: object) -> dict[str, object]:
    return {"lead_id": lead, "from_stage": src, "to_stage": dst, "status": "applied",
            "scores": {"total": 42}, "cause": {"rule": "pricing-page"}, **extra}


def test_leads_by_stage_follow_the_moves_and_alerts_count_by_team() -> None:
    v = _view()
    for lead in ("a", "b", "c"):
        v.feed("leads.stage-changes", _move(lead, "visitor", "lead"))
    v.feed("leads.stage-changes", _move("a", "lead", "mql"))
    v.feed("leads.stage-changes", _move("b", "lead", "mql"))
    v.feed("leads.stage-changes", _move("a", "mql", "sal"))
    refused = v.feed("leads.stage-changes",
                     _move("c", "lead", "sql", status="refused", reason="disqualified"))
    v.feed("routing.emea", {"lead_id": "a", "kind": "hot", "owner": "ana"})
    v.feed("routing.emea", {"lead_id": "b", "kind": "hot", "owner": None})
    v.feed("routing.sales", {"lead_id": "c", "kind": "contact_request", "owner": "bo"})
    assert v.feed("routing.nurture", {"lead_id": "c"}) is None  # counted, not notable
    v.feed("events.deadletter", {"source_topic": "events.web", "reason": "not JSON"})

    # 'visitor' never went above 0: leads first seen as moves out of it are not negative
    assert dict(v.leads_by_stage) == {"lead": 1, "mql": 1, "sal": 1}
    assert dict(v.alerts_by_team) == {"emea": 2, "sales": 1}
    assert (v.unowned, v.dead_letters, v.refused, v.routed["nurture"]) == (1, 1, 1, 1)
    assert refused == "[yellow]refused[/] c: lead → sql (disqualified)"
    assert v.line() == (
        "summary: worker starting…; 0 events/s scored (0 in all); leads by stage: lead 1, "
        "mql 1, sal 1; alerts by team: emea 2, sales 1; unowned 1; dead letters 1")


def test_rate_comes_from_the_worker_counter_between_two_readings() -> None:
    v = _view()
    v.observe(WorkerStatus(reachable=True, ready=False), 10.0)
    assert "waiting for Kafka to assign its partitions" in v.state_line()
    v.observe(WorkerStatus(reachable=True, ready=True, assigned_partitions=12,
                           events_scored=1000), 11.0)
    v.observe(WorkerStatus(reachable=True, ready=True, assigned_partitions=12,
                           events_scored=1750), 13.5)
    assert v.events_per_s == 300.0  # 750 events in 2.5 s
    assert v.state_line() == "worker ready on 12 partitions"
    v.observe(WorkerStatus(), 14.0)  # unreachable for a moment: the last rate stands
    assert v.events_per_s == 300.0 and v.state_line() == "worker starting…"


def test_the_view_draws_the_counts_and_recent_events_and_prints_data_as_data() -> None:
    v = _view()
    v.feed("leads.stage-changes", _move("[bold]x", "lead", "mql"))
    v.feed("routing.smb", {"lead_id": "y", "kind": "hot", "owner": None,
                           "top_reasons": [{"rule": "demo-request"}]})
    out = Console(record=True, width=120, color_system=None)
    out.print(v.render())
    text = out.export_text()
    assert "leads by stage" in text and "mql" in text
    assert "unowned" in text and "smb" in text
    # The lead id is shown literally, not taken as markup.
    assert "stage  [bold]x: lead → mql score 42 (cause: pricing-page)" in text
    assert "alert  smb: y hot  owner=unowned (demo-request)" in text
