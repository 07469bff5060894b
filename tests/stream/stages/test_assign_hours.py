"""assign_batch with working hours: a Saturday alert for a mon-fri team waits for Monday."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline.core.routing import Rep, RoutingRules, Team
from pipeline.stream.codec import AlertCommand, AssignCommand, SlaTick
from pipeline.stream.stages.assign import assign_batch


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


RULES = RoutingRules(sla={"hot_score": "1h"}, teams=(Team(
    name="sales", timezone="UTC", hours={"mon-fri": "09:00-17:00"},
    reps=(Rep(id="a"), Rep(id="b"))),))


def test_saturday_alert_waits_then_assigned_monday_and_escalates_in_business_hours() -> None:
    table: dict[str, Any] = {}

    def run(cmd: AssignCommand) -> Any:
        out = assign_batch([("sales", cmd)], table.get, RULES)
        table.update(out.writes)
        return out

    sat = ms("2026-12-05T10:00:00+00:00")
    out = run(AlertCommand({"alert_id": "al1", "lead_id": "L1", "kind": "hot_score",
                                   "triggered_ms": sat}))
    assert out.emitted == []
    p = table["sales"]["pending"]["al1"]
    assert (p["owner"], p["reason"]) == (None, "team closed until 2026-12-07T09:00:00.000+00:00")
    for t in ("2026-12-05T23:00:00+00:00", "2026-12-06T12:00:00+00:00",
              "2026-12-07T08:59:59+00:00"):
        out = run(SlaTick(ms(t)))
        assert (out.emitted, out.breaches) == ([], [])
    out = run(SlaTick(ms("2026-12-07T09:00:00+00:00")))
    assert out.breaches == []
    [body] = [e.body for e in out.emitted if e.role == "team"]
    assert (body["owner"], body["due_at"]) == ("a", "2026-12-07T10:00:00.000+00:00")
    assert run(SlaTick(ms("2026-12-07T09:59:59+00:00"))).emitted == []
    out = run(SlaTick(ms("2026-12-07T10:00:00+00:00")))
    assert out.breaches == [("sales", "hot_score")]
    assert [e.body["owner"] for e in out.emitted if e.role == "team"][-1] == "b"
