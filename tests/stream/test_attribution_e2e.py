"""Attribution and nurture on the real broker, with the shipped rules: a lead from a paid
search campaign becomes a warm MQL (nurture enroll), sales accepts it (nurture exit), an
opportunity of 42,000 opens and is lost (nurture re-enroll). The attribution messages credit
paid search, and the worker's /metrics count the moves and the pipeline by channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.workers import Isolated, WorkerProcess, consume, make_isolated, poll

pytestmark = [pytest.mark.integration]

LEAD = "at-cy"
VP = {"email": "cy@globex.com", "title": "VP Sales", "address": {"country": "US"},
      "company": {"employee_count": 200, "industry": "software"}}
PAID = "https://globex.example/pricing?utm_source=google&utm_medium=cpc&utm_campaign=brand-q4"


async def test_paid_lead_attributed_and_nurture_starts_and_stops(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    iso: Isolated = await make_isolated(kafka_bootstrap, tmp_path / "home")
    t = iso.settings.topics
    t0 = int(time.time() * 1000) - 600_000  # event time ten minutes ago, within the skew
    n = 0

    async def send(topic: str, body: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 / 1000 + n))
        msg = {"messageId": f"{LEAD}-{n}", "userId": LEAD, "timestamp": when, **body}
        await producer.send_and_wait(topic, orjson.dumps(msg), key=LEAD.encode())

    async def out(topic: str, ok: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
        got = await consume(iso.bootstrap, [topic],
                            until=lambda ms: ok([m for _, _, m in ms]), timeout=90)
        msgs = [m for _, _, m in got]
        assert ok(msgs), f"{topic}: {msgs}\n{worker.tail()}"
        return msgs

    worker = worker_factory(iso)
    await worker.wait_ready()
    # the paid click (the first touch and the one the lead was created on), then who it is
    # (fit 40) and more pricing views (10 + a page view 1 each): 11 + 40 + 11 = 62 on the
    # second view, over the mql line (60), and 73 on the third, under the hot line (90): a
    # warm MQL, so nurture, not an alert
    await send(t.web, {"type": "page", "name": "Pricing", "properties": {"url": PAID}})
    await send(t.web, {"type": "identify", "traits": VP})
    for _ in range(2):
        await send(t.web, {"type": "page", "name": "Pricing",
                           "properties": {"url": "https://globex.example/pricing"}})
    [mql] = await out(t.attribution, lambda ms: len(ms) >= 1)
    assert (mql["lead_id"], mql["stage"], mql["from_stage"]) == (LEAD, "mql", "lead")
    [touch] = mql["touches"]  # the later views name no origin: no touch of their own
    assert (touch["channel"], touch["source"], touch["medium"], touch["campaign"]) == (
        "paid_search", "google", "cpc", "brand-q4")
    assert touch["marks"] == ["lead", "mql"]
    assert {c["model"]: c["channels"] for c in mql["credits"]} == {
        m: {"paid_search": 1.0} for m in
        ("first_touch", "last_touch", "linear", "u_shaped", "w_shaped")}
    assert mql["deal"] is None and mql["rules_version"]
    [enroll] = await out(t.nurture_changes, lambda ms: len(ms) >= 1)
    assert (enroll["action"], enroll["reason"], enroll["stage"]) == ("enroll", "warm", "mql")

    # sales accepts it: out of nurture
    await send(t.crm, {"type": "track", "event": "Lead Accepted"})
    nurture = await out(t.nurture_changes, lambda ms: len(ms) >= 2)
    assert (nurture[1]["action"], nurture[1]["reason"], nurture[1]["stage"]) == (
        "exit", "sales_accepted", "sal")

    # an opportunity with an amount: attributed with its pipeline
    await send(t.crm, {"type": "track", "event": "Opportunity Created",
                       "properties": {"amount": 42000, "currency": "usd"}})
    atts = await out(t.attribution, lambda ms: len(ms) >= 2)
    opp = atts[1]
    assert (opp["stage"], opp["from_stage"]) == ("opportunity", "sal")
    assert opp["deal"] == {"kind": "pipeline", "amount": 42000.0, "currency": "USD",
                           "amount_issue": None}
    assert [c["channels"] for c in opp["credits"]] == [{"paid_search": 1.0}] * 5

    # /metrics: the moves and the pipeline credited to paid search, per model
    async def paid(name: str, **labels: str) -> float:
        return await worker.metric(name, channel="paid_search", model="w_shaped", **labels)

    await poll(lambda: paid("leadflow_attributed_pipeline_total"), lambda v: v == 42000, 30)
    assert await paid("leadflow_attributed_moves_total", stage="mql") == 1
    assert await paid("leadflow_attributed_moves_total", stage="opportunity") == 1
    assert await worker.metric("leadflow_attributed_moves_total", channel="other") == 0

    # the deal is lost: recycled, back in nurture
    await send(t.crm, {"type": "track", "event": "Deal Lost"})
    nurture = await out(t.nurture_changes, lambda ms: len(ms) >= 3)
    assert (nurture[2]["action"], nurture[2]["reason"], nurture[2]["stage"],
            nurture[2]["cause"]["rule"]) == ("enroll", "recycled", "recycled", "crm:Deal Lost")
    assert [m["nurture_id"] for m in nurture] == [
        f"{LEAD}:enroll:{LEAD}-3", f"{LEAD}:exit:{LEAD}-5", f"{LEAD}:enroll:{LEAD}-7"]
