"""The team record as the owners table keeps it: typed, and the stored layout unchanged."""

from __future__ import annotations

import orjson

from pipeline.core.routing import TeamState
from pipeline.stream.stages.records import PendingAlert, QueuedAlert, TeamRecord

ALERT = {"alert_id": "a1", "lead_id": "u1", "kind": "instant", "triggered_ms": 1_000}


def test_a_team_record_round_trips_through_its_stored_json() -> None:
    rec = TeamRecord(
        TeamState(current={"r1": 2}, day=3, today={"r1": 1}, accounts={"acme.com": "r1"}),
        {"a1": PendingAlert(301_000, ALERT, "r1", ("r0",), ("a0",)),
         "a2": PendingAlert(9_000, {**ALERT, "alert_id": "a2"}, None, waiting=True,
                            reason="team closed until then", since="1970-01-01T00:00:01Z")},
        {"a3": QueuedAlert("a3", "u3", "hot_score", "1970-01-01T00:00:02Z", "no rep free")},
        queue_dropped=4)
    assert TeamRecord.from_stored(orjson.loads(orjson.dumps(rec.to_stored()))) == rec
    assert rec.overdue(9_000) and not rec.overdue(8_999)


def test_a_record_stored_before_the_types_decodes_to_the_same_values() -> None:
    stored = {
        "state": {"current": {"r1": 1}, "day": 2, "today": {}, "accounts": {}},
        "pending": {"a1": {"due_ms": 5, "alert": ALERT, "owner": "r1", "excluded": [],
                           "supersedes": ["a0"]}},
        "queue": {}}
    rec = TeamRecord.from_stored(stored)
    assert rec.pending["a1"] == PendingAlert(5, ALERT, "r1", (), ("a0",))
    assert (rec.state.current, rec.queue_dropped) == ({"r1": 1}, 0)
    assert rec.to_stored() == stored
    assert TeamRecord.from_stored(None) == TeamRecord()
