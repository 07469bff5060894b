"""Working hours on the real broker, on a worker clock the test sets: a demo request raised
on a Saturday for the shipped `emea` team (Mon-Fri 09:00-17:30 Europe/Berlin) waits in the
team queue, is assigned when the team opens on Monday, and is neither escalated nor
reassigned before; after its SLA lapses it is reassigned and the lead API follows the owner.

The worker's clock starts on Saturday 2026-11-28 12:00 UTC and runs 1800 times wall speed
(an hour every two seconds). The test rules are the shipped ones with a 4 h SLA, so that
each SLA period lasts eight wall seconds, long enough to read the lead API between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.core.rules import default_rules_text, parse_rules
from tests.support.workers import Isolated, WorkerProcess, consume, make_isolated, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SATURDAY_NOON = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MONDAY_OPENING = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
EMEA_REPS = {"rep-lena", "rep-paul"}
LEAD = "wh-berlin"


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _rules(tmp: Path) -> Path:
    text = default_rules_text()
    shipped = "sla: {instant: 5m, hot_score: 1h, pql: 4h}"
    assert shipped in text, "the shipped SLA line moved: update this test"
    path = tmp / "rules.yaml"
    path.write_text(text.replace(shipped, "sla: {instant: 4h, hot_score: 4h, pql: 4h}"))
    return path


async def test_a_saturday_alert_waits_for_monday_then_escalates_and_the_owner_follows(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    iso: Isolated = await make_isolated(kafka_bootstrap, tmp_path / "home", extra_env={
        "LEADFLOW_RULES_FILE": str(_rules(tmp_path)),
        "LEADFLOW_CLOCK_START": SATURDAY_NOON.isoformat(),
        "LEADFLOW_CLOCK_RATE": "1800",
    })
    t = iso.settings.topics
    worker = worker_factory(iso)
    at = SATURDAY_NOON.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for body in (
        {"type": "identify", "messageId": f"{LEAD}-id", "userId": LEAD, "timestamp": at,
         "traits": {"email": "jonas@kraftwerk-software.de", "title": "VP Sales",
                    "address": {"country": "DE"},
                    "company": {"employee_count": 200, "industry": "software"}}},
        {"type": "track", "messageId": f"{LEAD}-demo", "userId": LEAD, "timestamp": at,
         "event": "Demo Requested"},
    ):
        await producer.send_and_wait(t.web, orjson.dumps(body), key=LEAD.encode())
    await worker.wait_ready()

    # Before Monday: unowned in the team queue, waiting for the opening.
    queue = await poll(lambda: worker.get("/teams/emea/queue"),
                        lambda r: r[0] == 200 and r[1]["waiting"], 80)
    [waiting] = queue[1]["waiting"]
    assert waiting["lead_id"] == LEAD and waiting["kind"] == "instant"
    assert _ms(waiting["since"]) < _ms(MONDAY_OPENING.isoformat()), (
        "the worker's clock passed Monday before the alert was routed: nothing was tested")
    assert waiting["reason"] == "team closed until 2026-11-30T08:00:00.000+00:00"
    assert _ms(waiting["due_at"]) == _ms(MONDAY_OPENING.isoformat())

    def placed_and_reassigned(msgs: list[Any]) -> bool:
        return any(topic == t.escalations for topic, _k, _m in msgs) and sum(
            1 for topic, _k, _m in msgs if topic == t.routing("emea")) >= 2

    async def owner() -> Any:
        return (await worker.get(f"/leads/{LEAD}"))[1]

    # Monday: assigned with an SLA counted from the opening; the lead shows its owner.
    alerts = await consume(kafka_bootstrap, [t.routing("emea")],
                           until=lambda m: len(m) >= 1, timeout=120)
    first = alerts[0][2]
    first_owner = first["owner"]
    assert first_owner in EMEA_REPS, first
    placed_at = _ms(first["due_at"]) - 4 * 3_600_000  # 4 business hours, all on Monday
    assert _ms(MONDAY_OPENING.isoformat()) <= placed_at < _ms("2026-11-30T09:00:00Z"), first
    # (eight wall seconds before this SLA lapses and the alert moves on)
    doc = await poll(owner, lambda d: d is not None and d.get("owner") == first_owner, 30)
    assert doc["team"] == "emea"

    # Not acknowledged: escalated and reassigned after the SLA, never before Monday.
    msgs = await consume(kafka_bootstrap, [t.routing("emea"), t.escalations],
                         until=placed_and_reassigned, timeout=60)
    escalations = [m for topic, _k, m in msgs if topic == t.escalations]
    first_breach = min(escalations, key=lambda e: _ms(e["breached_at"]))
    assert first_breach["from_owner"] == first_owner
    # raised under the test's rules: the escalation names them, as the alert did
    assert first_breach["rules_version"] == first["rules_version"] == parse_rules(
        _rules(tmp_path).read_text(), "rules.yaml").version
    assert first_breach["to_owner"] in EMEA_REPS - {first_owner}
    assert _ms(first_breach["breached_at"]) >= _ms(first["due_at"])
    assert all(_ms(e["breached_at"]) >= _ms(MONDAY_OPENING.isoformat()) for e in escalations)
    # and the lead API shows the new owner (until that SLA lapses too)
    doc = await poll(owner, lambda d: d.get("owner") == first_breach["to_owner"], 30)
    assert doc["team"] == "emea"
