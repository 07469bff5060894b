"""Qualification decisions on the real broker with the shipped rules: a good-fit hand-raiser
reaches its team and the lead API shows its owner; a competitor's demo request reaches the
review topic and no team topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.core.rules import load_default_rules
from tests.support.workers import Isolated, WorkerProcess, consume

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SALES_REPS = {"rep-sam", "rep-ava", "rep-kai"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _calls(lead: str, email: str) -> list[dict[str, Any]]:
    # US, 200 employees: the catch-all team `sales` (no working hours in the shipped rules)
    return [
        {"type": "identify", "messageId": f"{lead}-id", "userId": lead, "timestamp": _now(),
         "traits": {"email": email, "title": "VP Sales", "address": {"country": "US"},
                    "company": {"employee_count": 200, "industry": "software"}}},
        {"type": "track", "messageId": f"{lead}-demo", "userId": lead, "timestamp": _now(),
         "event": "Demo Requested"},
    ]


async def test_hand_raisers_go_to_their_team_or_to_review_and_owners_are_on_the_lead(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
) -> None:
    t = isolated.settings.topics
    worker = worker_factory(isolated)
    await worker.wait_ready()
    for lead, email in (("q-buyer", "ana@globex.com"), ("q-rival", "spy@rivalcrm.example")):
        for body in _calls(lead, email):
            await producer.send_and_wait(t.web, orjson.dumps(body), key=lead.encode())

    topics = [t.routing("sales"), t.review, t.assignments]

    def done(msgs: list[Any]) -> bool:
        seen = {(topic, m["lead_id"]) for topic, _k, m in msgs}
        return {(t.routing("sales"), "q-buyer"), (t.review, "q-rival"),
                (t.assignments, "q-buyer")} <= seen

    msgs = await consume(isolated.bootstrap, topics, until=done, timeout=90)
    assert done(msgs), worker.tail()
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, _k, m in msgs:
        by_topic.setdefault(topic, []).append(m)
    [alert] = by_topic[t.routing("sales")]
    assert (alert["lead_id"], alert["kind"], alert["team"]) == ("q-buyer", "instant", "sales")
    assert alert["owner"] in SALES_REPS and alert["sla_seconds"] == 300
    [review] = by_topic[t.review]
    assert (review["lead_id"], review["kind"], review["owner"], review["sla_seconds"]) == (
        "q-rival", "review", None, None)
    assert review["reason"] == "lead is disqualified"
    assert review["trigger"]["rule"] == "demo_request"
    [assignment] = by_topic[t.assignments]
    assert (assignment["owner"], assignment["team"], assignment["alert_id"]) == (
        alert["owner"], "sales", alert["alert_id"])

    # the owner is written back to the lead
    deadline = time.monotonic() + 60
    doc: Any = None
    while time.monotonic() < deadline:
        status, doc = await worker.get("/leads/q-buyer")
        if status == 200 and doc.get("owner"):
            break
        await asyncio.sleep(0.3)
    assert doc is not None and (doc["owner"], doc["team"]) == (alert["owner"], "sales"), doc
    status, rival = await worker.get("/leads/q-rival")
    assert status == 200 and rival["stage"] == "disqualified" and rival["owner"] is None

    # every decision names the rules that made it, and so do the worker's lead API, /readyz
    # and /metrics
    version = load_default_rules().version
    assert {alert["rules_version"], review["rules_version"], assignment["rules_version"],
            doc["rules_version"]} == {version}
    moves = await consume(isolated.bootstrap, [t.stage_changes],
                          until=lambda m: any(d["to_stage"] == "disqualified" for *_, d in m))
    assert moves and {d["rules_version"] for *_, d in moves} == {version}
    ready = (await worker.get("/readyz"))[1]
    assert ready["rules_version"] == version
    assert ready["recovery"] == {}  # ready: no table has changelog records left to restore
    assert await worker.metric("leadflow_rules_info") == 1

