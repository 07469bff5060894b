"""Acceptance of routing against a real worker: territory teams, weighted owners, SLA escalation.

A rules file with two teams (`emea` for DE/FR with reps weighted 2:1, `sales` catch-all
weighted 1:1) and a 1 h SLA; hot leads (identify + "Demo Requested") from a plain producer;
alerts and escalations read with a plain consumer from the topics alert consumers use.

The worker's clock runs RATE times wall speed, so an SLA period lasts SLA_S / RATE = 30 wall
seconds: an ack sent within a few seconds of its alert has a wide margin before the deadline
even on a busy machine, and escalations still come within a minute.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.kafka.topics import ensure_topics, topic_specs
from tests.support.workers import REPO, Isolated, WorkerProcess, consume

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLA_S = 3600
RATE = 120  # worker clock speed: one SLA period is SLA_S / RATE = 30 wall seconds
SLA_WALL_S = SLA_S / RATE
#: An ack must go out at least this long (wall time) before its alert's deadline, so that
#: the worker has applied it by then; the test fails (rather than lies) if it went out later.
ACK_MARGIN_S = 15.0
ROUTING = f"""routing:
  sla: {{instant: {SLA_S}s, hot_score: {SLA_S}s, pql: {SLA_S}s}}
  teams:
    - name: emea
      match: {{countries: [DE, FR]}}
      reps:
        - {{id: rep-lena, capacity: 2}}
        - {{id: rep-paul, capacity: 1}}
    - name: sales
      reps:
        - {{id: rep-sam, capacity: 1}}
        - {{id: rep-ava, capacity: 1}}
"""
REPS = {"emea": {"rep-lena", "rep-paul"}, "sales": {"rep-sam", "rep-ava"}}

# lead id -> country; six in the emea territory, four for the catch-all team
COUNTRIES = {**{f"eu-{i}": ("DE" if i % 2 else "FR") for i in range(6)},
             **{f"us-{i}": "US" for i in range(4)}}
EXPECTED_TEAM = {lead: "emea" if c in ("DE", "FR") else "sales" for lead, c in COUNTRIES.items()}
ACKED = {"eu-0", "eu-2", "eu-4", "us-0", "us-2"}  # acknowledged right away; the rest are not
# Hot leads sent once the worker's clock is past every acked alert's deadline, never
# acknowledged: their escalations come from a timer tick a whole SLA period later, which
# proves the acked alerts stayed quiet that long past their deadline (one per team: the
# timer ticks each team on its own).
SENTINELS = {"eu-sentinel": "DE", "us-sentinel": "US"}


def rules_file(tmp_path: Path) -> Path:
    text = (REPO / "pipeline" / "rules" / "default.yaml").read_text()
    head, sep, _ = text.partition("\nrouting:")
    assert sep, "default.yaml has no routing section to replace"
    path = tmp_path / "rules.yaml"
    path.write_text(head + "\n" + ROUTING)
    return path


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hot_lead(lead: str, country: str) -> list[dict[str, Any]]:
    ctx = {"library": {"name": "analytics.js", "version": "5.0"}}
    return [
        {"type": "identify", "messageId": f"{lead}-id", "userId": lead,
         "timestamp": _now_iso(), "context": ctx,
         "traits": {"email": f"buyer@{lead}-corp.com", "country": country, "employees": 250,
                    "title": "VP Sales", "company": {"name": f"{lead} Corp"}}},
        {"type": "track", "messageId": f"{lead}-demo", "userId": lead, "event": "Demo Requested",
         "timestamp": _now_iso(), "context": ctx, "properties": {"form": "demo"}},
    ]


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def test_hot_leads_routed_by_territory_weighted_and_escalated_after_sla(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    iso = Isolated(kafka_bootstrap, tmp_path / "home", extra_env={
        "LEADFLOW_RULES_FILE": str(rules_file(tmp_path)),
        "LEADFLOW_SLA_CHECK_INTERVAL_S": "0.5",
        # from now, fast: the teams have no working hours, so only the speed matters
        "LEADFLOW_CLOCK_START": datetime.now(UTC).isoformat(),
        "LEADFLOW_CLOCK_RATE": str(RATE),
    })
    await ensure_topics(kafka_bootstrap, topic_specs(iso.settings, teams=["emea", "sales"]))
    t = iso.settings.topics
    team_topics = {t.routing("emea"): "emea", t.routing("sales"): "sales"}
    worker = worker_factory(iso)
    await worker.wait_ready()

    # Subscribe before producing, so that acks go out as soon as each alert shows up.
    consumer = AIOKafkaConsumer(*team_topics, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    alerts: dict[str, dict[str, Any]] = {}  # lead -> its first (not reassigned) alert
    produced_at: dict[str, float] = {}  # lead -> wall time its events were sent
    acked_at: dict[str, float] = {}
    try:
        for _ in range(3):  # wait for the assignment so that nothing is missed
            if consumer.assignment():
                break
            await consumer.getmany(timeout_ms=500)
        for lead, country in COUNTRIES.items():
            produced_at[lead] = time.time()
            for body in hot_lead(lead, country):
                await producer.send_and_wait(t.web, orjson.dumps(body), key=lead.encode())
        deadline = time.monotonic() + 60
        while len(alerts) < len(COUNTRIES) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, recs in batch.items():
                for r in recs:
                    a = orjson.loads(r.value or b"null")
                    assert a["team"] == team_topics[tp.topic]
                    if a.get("reassigned"):
                        continue
                    assert a["lead_id"] not in alerts, f"second alert for {a['lead_id']}: {a}"
                    alerts[a["lead_id"]] = a
                    if a["lead_id"] in ACKED:
                        ack = {"type": "track", "messageId": f"ack-{a['alert_id']}",
                               "userId": a["lead_id"], "event": "Alert Acknowledged",
                               "timestamp": _now_iso(), "properties": {"alert_id": a["alert_id"]}}
                        await producer.send_and_wait(t.crm, orjson.dumps(ack),
                                                     key=a["lead_id"].encode())
                        acked_at[a["lead_id"]] = time.time()
    finally:
        await consumer.stop()

    assert set(alerts) == set(COUNTRIES), worker.tail()
    # Every ack went out well before its alert's deadline (else the test proves nothing).
    # The worker routed the alert after we produced its lead, so at the ack the worker's
    # clock had run at most (ack - produced) * RATE past the routing, and due = routed + SLA.
    for lead, at in acked_at.items():
        assert at - produced_at[lead] < SLA_WALL_S - ACK_MARGIN_S, (lead, at, alerts[lead])

    # right team, exact lead sets
    by_team: dict[str, set[str]] = {"emea": set(), "sales": set()}
    for lead, a in alerts.items():
        by_team[a["team"]].add(lead)
    assert by_team == {"emea": {ld for ld, tm in EXPECTED_TEAM.items() if tm == "emea"},
                       "sales": {ld for ld, tm in EXPECTED_TEAM.items() if tm == "sales"}}
    # owners spread by weight: 2:1 over six leads, 1:1 over four
    owners = {team: Counter(a["owner"] for a in alerts.values() if a["team"] == team)
              for team in by_team}
    assert owners == {"emea": {"rep-lena": 4, "rep-paul": 2},
                      "sales": {"rep-sam": 2, "rep-ava": 2}}
    for lead, a in alerts.items():
        assert a["kind"] == "instant" and a["temperature"] == "hot"
        assert a["sla_seconds"] == SLA_S
        assert a["reassigned"] is False
        assert a["lead"]["country"] == COUNTRIES[lead]
        why = ("territory/segment match: country " + COUNTRIES[lead]
               if a["team"] == "emea" else "catch-all team")
        assert a["assignment"]["reason"] == \
            f"team {a['team']} ({why}); weighted round robin by capacity"
        # The SLA runs from when the alert was routed on the worker's (fast) clock, which is
        # past the (wall-clock) trigger, not from the trigger itself.
        assert _ms(a["due_at"]) > a["triggered_ms"] + SLA_S * 1000, a

    # after the SLA: escalations exactly for the unacknowledged alerts, none for the others
    unacked = {a["alert_id"]: lead for lead, a in alerts.items() if lead not in ACKED}
    assert len(unacked) == len(COUNTRIES) - len(ACKED)
    last_acked_due = max(_ms(alerts[lead]["due_at"]) for lead in ACKED)

    def past_acked_deadlines(o: list[Any]) -> bool:
        # breached_at is the worker's clock at a tick: one past every acked alert's deadline
        # (a second escalation of an unacked one, if the first ones came earlier)
        return {d["alert_id"] for _, _, d in o} >= set(unacked) and \
            max(_ms(d["breached_at"]) for _, _, d in o) >= last_acked_due

    got = await consume(kafka_bootstrap, [t.escalations], until=past_acked_deadlines,
                        timeout=SLA_WALL_S * 4)
    assert past_acked_deadlines(got), (got, worker.tail())
    # Leads sent now are routed after every acked alert's deadline and escalate a whole SLA
    # period later: by then an acked alert that was going to escalate would have.
    for lead, country in SENTINELS.items():
        for body in hot_lead(lead, country):
            await producer.send_and_wait(t.web, orjson.dumps(body), key=lead.encode())
    got = await consume(kafka_bootstrap, [t.escalations],
                        until=lambda o: {d["lead_id"] for _, _, d in o} >= set(SENTINELS),
                        timeout=SLA_WALL_S * 4)
    sentinel_breach = {d["team"]: _ms(d["breached_at"]) for _, _, d in got
                       if d["lead_id"] in SENTINELS}
    assert set(sentinel_breach) == {"emea", "sales"}, (got, worker.tail())
    for lead in ACKED:  # each team ticked a whole SLA period after every acked deadline
        a = alerts[lead]
        assert sentinel_breach[a["team"]] >= _ms(a["due_at"]) + SLA_S * 1000, (a, got)
    got = [g for g in got if g[2]["lead_id"] not in SENTINELS]
    assert {d["alert_id"] for _, _, d in got} == set(unacked), worker.tail()

    first: dict[str, dict[str, Any]] = {}
    for _, key, d in got:  # keyed by lead: one lead's escalations are read in order
        first.setdefault(d["alert_id"], d)
        assert key == d["lead_id"].encode()
    for aid, lead in unacked.items():
        e, a = first[aid], alerts[lead]
        assert e["lead_id"] == lead and e["team"] == a["team"] and e["kind"] == "instant"
        assert e["from_owner"] == a["owner"]
        assert e["to_owner"] in REPS[a["team"]] - {a["owner"]}  # the other rep of the team
        assert e["sla_seconds"] == SLA_S
        assert e["reason"] == f"not acknowledged within {SLA_S}s"
        assert _ms(e["breached_at"]) >= _ms(a["due_at"])

    # ... and the alert re-sent to the team with the new owner, marked reassigned (in the
    # same batch as its escalation; the sentinels' re-sends come last)
    def resent_all(o: list[Any]) -> bool:
        again = {d["lead_id"] for _, _, d in o if d.get("reassigned")}
        return again >= set(unacked.values()) | set(SENTINELS)

    resent = await consume(kafka_bootstrap, list(team_topics), until=resent_all, timeout=60)
    assert resent_all(resent), worker.tail()
    again = [d for _, _, d in resent if d.get("reassigned") and d["lead_id"] not in SENTINELS]
    assert {d["alert_id"] for d in again} == set(unacked)
    for aid, lead in unacked.items():
        r = next(d for d in again if d["alert_id"] == aid)  # the first re-send
        assert r["lead_id"] == lead and r["team"] == alerts[lead]["team"]
        assert r["owner"] == first[aid]["to_owner"]
        assert r["assignment"]["excluded"] == [alerts[lead]["owner"]]
        assert r["sla_seconds"] == SLA_S
    # the original alerts were sent exactly once each
    assert sorted(d["lead_id"] for d in (x for _, _, x in resent) if not d.get("reassigned")) \
        == sorted([*COUNTRIES, *SENTINELS])
