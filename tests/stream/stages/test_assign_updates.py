"""assign_batch: a stricter alert updates the first one, and unowned alerts wait in a queue.

Expected values are derived by hand from the routing rules below: two reps, round robin,
SLA 5 min for `instant` and 1 h for `hot_score`, wall-clock SLA.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.routing import RoutingRules
from pipeline.stream.codec import AckCommand, AlertCommand, AssignCommand, SlaTick
from pipeline.stream.stages.assign import assign_batch, team_queue
from pipeline.stream.stages.records import TeamRecord

ROUTING = RoutingRules.model_validate({
    "sla": {"instant": "5m", "hot_score": "1h"},
    "teams": [{"name": "sales", "reps": [{"id": "r1"}, {"id": "r2"}]}],
})
MIN = 60_000


def alert(aid: str, lead: str, kind: str, at: int, *, updates: str | None = None,
          current_owner: str | None = None) -> tuple[str, AssignCommand]:
    return ("sales", AlertCommand({
        "alert_id": aid, "lead_id": lead, "kind": kind, "triggered_ms": at, "domain": None,
        "updates": updates, "current_owner": current_owner}, routed_ms=at))


def run(table: dict[str, Any], *cmds: tuple[str, AssignCommand]) -> Any:
    res = assign_batch(list(cmds), table.get, ROUTING)
    table.update(res.writes)
    return res


def placed(res: Any) -> list[dict[str, Any]]:
    return [e.body for e in res.emitted if e.role == "team"]


def test_a_demo_request_after_a_hot_score_alert_updates_it_same_owner_tighter_sla() -> None:
    table: dict[str, Any] = {}
    first = placed(run(table, alert("h1", "u1", "hot_score", 0)))[0]
    assert (first["owner"], first["due_at"]) == ("r1", "1970-01-01T01:00:00.000+00:00")
    # ten minutes later the same lead requests a demo: the stricter alert updates h1
    upd = placed(run(table, alert("d1", "u1", "instant", 10 * MIN, updates="h1")))
    assert len(upd) == 1
    assert (upd[0]["alert_id"], upd[0]["updates"], upd[0]["owner"]) == ("d1", "h1", "r1")
    assert upd[0]["due_at"] == "1970-01-01T00:15:00.000+00:00"  # 10 min + 5 min, not 1 h
    assert "update of alert h1" in upd[0]["assignment"]["reason"]
    assert "current_owner" not in upd[0] and "domain" not in upd[0]
    # one alert pending, not two, and the round robin did not count the update: the next
    # new lead goes to r2
    assert list(table["sales"]["pending"]) == ["d1"]
    assert placed(run(table, alert("x1", "u2", "instant", 11 * MIN)))[0]["owner"] == "r2"
    # acknowledging the first alert closes its update too
    res = run(table, ("sales", AckCommand("u1", "h1", 12 * MIN)))
    assert res.speed_to_lead == [("sales", "instant", 120.0)]
    assert "d1" not in table["sales"]["pending"]


def test_an_update_keeps_the_earlier_deadline_when_that_one_is_tighter() -> None:
    table: dict[str, Any] = {}
    run(table, alert("d1", "u1", "instant", 0))
    upd = placed(run(table, alert("h1", "u1", "hot_score", 2 * MIN, updates="d1")))[0]
    assert upd["owner"] == "r1" and upd["due_at"] == "1970-01-01T00:05:00.000+00:00"
    rec = TeamRecord.from_stored(table["sales"])
    assert rec.overdue(5 * MIN) and not rec.overdue(5 * MIN - 1)


def test_an_update_of_an_acknowledged_alert_goes_to_the_lead_s_owner() -> None:
    table: dict[str, Any] = {}
    run(table, alert("x0", "u0", "instant", 0))  # r1 takes u0; r2 is next in turn
    run(table, ("sales", AckCommand("u0", "x0", MIN)))
    upd = placed(run(table, alert("d0", "u0", "instant", 20 * MIN, updates="x0",
                                  current_owner="r1")))[0]
    assert (upd["owner"], upd["due_at"]) == ("r1", "1970-01-01T00:25:00.000+00:00")
    # an owner who left the team is no owner: the alert is placed as a new one
    gone = placed(run(table, alert("d9", "u9", "instant", 30 * MIN, updates="x9",
                                   current_owner="r7")))[0]
    assert gone["owner"] == "r2" and "round robin" in gone["assignment"]["reason"]


FULL = RoutingRules.model_validate({
    "sla": {"instant": "5m"},
    "teams": [{"name": "sales", "reps": [{"id": "r1", "daily_cap": 1}]}],
})


def test_an_alert_no_rep_can_take_waits_in_the_team_queue_with_why_until_acknowledged() -> None:
    table: dict[str, Any] = {}

    def go(*cmds: tuple[str, dict[str, Any]]) -> Any:
        res = assign_batch(list(cmds), table.get, FULL)
        table.update(res.writes)
        return res

    go(alert("a1", "u1", "instant", 0))
    second = placed(go(alert("a2", "u2", "instant", MIN)))[0]
    assert second["owner"] is None
    q = team_queue("sales", table["sales"])
    assert [(i["alert_id"], i["lead_id"]) for i in q["unowned"]] == [("a2", "u2")]
    assert "r1: daily cap 1 reached" in q["unowned"][0]["reason"]
    assert [(i["alert_id"], i["owner"]) for i in q["owned"]] == [("a1", "r1")]
    # r1 lets a1 lapse: nobody left, so a1 joins the unowned queue (and stops its timer)
    go(("sales", SlaTick(5 * MIN)))
    q = team_queue("sales", table["sales"])
    assert sorted(i["alert_id"] for i in q["unowned"]) == ["a1", "a2"]
    assert "no rep of team sales left" in next(
        i["reason"] for i in q["unowned"] if i["alert_id"] == "a1")
    # someone picks up u2 (by lead, no alert id): it leaves the queue
    go(("sales", AckCommand("u2", None, 6 * MIN)))
    assert [i["alert_id"] for i in team_queue("sales", table["sales"])["unowned"]] == ["a1"]
