"""The lead API on a scaled-out pipeline: any worker answers for any lead.

Two real workers share the input partitions; a lead's state lives on the worker that owns
its partition, and the other one forwards `GET /leads/{id}` there (Faust's router).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.core.engine import apply
from pipeline.core.rules import load_default_rules
from pipeline.models.events import parse_message
from pipeline.stream.leadview import lead_document
from tests.support.workers import Isolated, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TITLES = ["VP Sales", "Head of Marketing", "Intern", "CEO", "Software Engineer", "CRO"]
COUNTRIES = ["US", "DE", "FR", "GB", "BR", "JP"]


def identify(i: int, ts: str) -> dict[str, Any]:
    lead = f"api-{i}"
    return {"type": "identify", "messageId": f"{lead}-id", "userId": lead, "timestamp": ts,
            "context": {"library": {"name": "analytics-python", "version": "2.3"}},
            "traits": {"email": f"{lead}@{'gmail.com' if i % 4 == 0 else f'co{i}.com'}",
                       "title": TITLES[i % len(TITLES)], "country": COUNTRIES[i % 6],
                       "employees": [5, 80, 400, 2500][i % 4], "industry": "software",
                       "company": {"name": f"Co {i}"}}}


def expected_document(body: dict[str, Any]) -> dict[str, Any]:
    """The pure core's view of a lead after its one identify, as the API renders it."""
    rules = load_default_rules()
    e = parse_message(orjson.dumps(body), source="web")
    state = apply(None, e, rules).state
    record = {"s": state.to_dict(), "seen": {body["messageId"]: e.timestamp_ms}}
    return lead_document(body["userId"], record, rules)


async def _both_ready(workers: list[WorkerProcess], timeout: float = 120) -> list[int]:
    """Wait until both workers are ready at once (the second one's join rebalances both)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [await w.get("/readyz") for w in workers]
        if all(s == 200 for s, _ in states):
            return [int(d["assigned_partitions"]) for _, d in states]
        await asyncio.sleep(0.5)
    raise AssertionError(f"not ready: {states}\n" + "\n".join(w.tail() for w in workers))


async def test_any_worker_answers_for_any_lead(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
) -> None:
    assert isolated.settings.partitions == 4
    w1 = worker_factory(isolated)
    w2 = worker_factory(isolated)
    assert w1.web_port != w2.web_port
    await w1.wait_ready()
    await w2.wait_ready()
    assigned = await _both_ready([w1, w2])
    # both own a share of the partitions: some answers must come from the other worker
    assert all(n > 0 for n in assigned), assigned

    ts = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="milliseconds")
    bodies = [identify(i, ts.replace("+00:00", "Z")) for i in range(12)]
    for body in bodies:
        await producer.send_and_wait(isolated.settings.topics.web, orjson.dumps(body),
                                     key=body["userId"].encode())

    # wait until every lead is scored (asking either worker)
    pending = {b["userId"] for b in bodies}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for lead in sorted(pending):
            status, doc = await w1.get(f"/leads/{lead}")
            if status == 200 and doc["events_seen"] == 1:
                pending.discard(lead)
        await asyncio.sleep(0.3)
    assert not pending, f"not scored: {pending}\n{w1.tail()}\n{w2.tail()}"

    stages = set()
    for body in bodies:
        lead = body["userId"]
        expected = expected_document(body)
        (s1, d1), (s2, d2) = [await w.get(f"/leads/{lead}") for w in (w1, w2)]
        assert (s1, s2) == (200, 200), (lead, d1, d2)
        assert d1 == d2, lead
        assert d1["stage"] == expected["stage"] and d1["scores"] == expected["scores"], lead
        assert d1 == expected, lead
        stages.add(d1["stage"])
        assert d1["traits"]["country"] == body["traits"]["country"]
    assert len({orjson.dumps(expected_document(b)["scores"]) for b in bodies}) > 1  # varied

    for w in (w1, w2):
        status, doc = await w.get("/leads/unknown")
        assert status == 404 and doc == {"error": "no lead with id 'unknown'"}
        status, doc = await w.get("/healthz")
        assert (status, doc) == (200, {"status": "ok"})
        status, doc = await w.get("/readyz")
        assert status == 200 and doc["ready"] is True
