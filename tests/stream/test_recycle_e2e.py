"""A good-fit lead that goes quiet on the real broker, with the shipped rules: it goes hot
and gets an alert; months later, with no event of its own, the worker's decay timer recycles
it (stage change and routing.recycle); when it comes back as engaged as before it is an MQL
again and gets a new alert.

The months pass on the worker clock the test sets: the first worker runs from Monday
2026-06-01 10:00 UTC, the second (same state folder, so the same leads) from 120 days later.
Expected values are the hand-derived ones of tests/core/test_qualification.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.workers import Isolated, WorkerProcess, consume, make_isolated, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
LATER = T0 + timedelta(days=120)
LEAD = "rc-ana"
VP = {"email": "ana@globex.com", "title": "VP Sales", "address": {"country": "US"},
      "company": {"employee_count": 200, "industry": "software"}}


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _engaged(at: datetime, tag: str) -> list[dict[str, Any]]:
    """Engagement 64: pricing 3x(10 + page view 1), 3 downloads x5, 2 webinars x8."""
    def ts(i: int) -> str:
        return _iso(at + timedelta(seconds=i))

    def base(i: int) -> dict[str, Any]:
        return {"messageId": f"{LEAD}-{tag}-{i}", "userId": LEAD, "timestamp": ts(i)}

    out = [{**base(i), "type": "page", "name": "Pricing",
            "properties": {"url": "https://globex.example/pricing", "path": "/pricing"}}
           for i in range(3)]
    out += [{**base(10 + i), "type": "track", "event": "Document Downloaded"} for i in range(3)]
    out += [{**base(20 + i), "type": "track", "event": "Webinar Registered"} for i in range(2)]
    return out


async def test_a_quiet_good_fit_lead_is_recycled_and_alerted_again_when_it_returns(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    iso: Isolated = await make_isolated(kafka_bootstrap, tmp_path / "home", extra_env={
        "LEADFLOW_CLOCK_START": T0.isoformat(),
        "LEADFLOW_DECAY_CHECK_INTERVAL_S": "1",
    })
    t = iso.settings.topics
    sales = t.routing("sales")  # US, 200 employees: the catch-all team, always open

    async def send(bodies: list[dict[str, Any]], topic: str = t.web) -> None:
        for body in bodies:
            await producer.send_and_wait(topic, orjson.dumps(body), key=LEAD.encode())

    # June: identify as a perfect fit (40), then engagement 64: 104, hot -> one alert
    worker = worker_factory(iso)
    await worker.wait_ready()
    await send([{"type": "identify", "messageId": f"{LEAD}-id", "userId": LEAD,
                 "timestamp": _iso(T0), "traits": VP}, *_engaged(T0 + timedelta(seconds=1), "a")])
    got = await consume(iso.bootstrap, [sales], until=lambda m: len(m) >= 1, timeout=90)
    assert len(got) == 1, f"{got}\n{worker.tail()}"
    [(_, _, first)] = got
    assert (first["lead_id"], first["kind"]) == (LEAD, "hot_score"), first
    doc = await poll(lambda: worker.get(f"/leads/{LEAD}"),
                      lambda r: r[0] == 200 and r[1]["stage"] == "mql", 30)
    assert doc[1]["scores"]["total"] == 104.0 and doc[1]["hot"] is True
    # the rep acknowledges it, so the later months have nothing left to escalate
    await send([{"type": "track", "messageId": f"ack-{first['alert_id']}", "userId": LEAD,
                 "event": "Alert Acknowledged", "timestamp": _iso(T0 + timedelta(minutes=2)),
                 "properties": {"alert_id": first["alert_id"]}}], t.crm)
    await poll(lambda: worker.get("/teams/sales/queue"),
                lambda r: r[0] == 200 and not any(
                    a["lead_id"] == LEAD for part in r[1].values() if isinstance(part, list)
                    for a in part), 30)
    # still June: a decay check has run (1 s interval) and left the lead alone
    assert (await worker.get(f"/leads/{LEAD}"))[1]["stage"] == "mql"
    assert worker.stop() == 0

    # 120 days later, the lead silent: the decay timer recycles it by itself
    iso.env["LEADFLOW_CLOCK_START"] = LATER.isoformat()
    worker = worker_factory(iso)
    await worker.wait_ready()

    def recycled(msgs: list[Any]) -> bool:
        return any(topic == t.recycle and m["lead_id"] == LEAD for topic, _k, m in msgs) and any(
            topic == t.stage_changes and m["to_stage"] == "recycled" for topic, _k, m in msgs)

    msgs = await consume(iso.bootstrap, [t.stage_changes, t.recycle], until=recycled,
                         timeout=90)
    assert recycled(msgs), f"not recycled: {msgs}\n{worker.tail()}"
    [move] = [m for topic, _k, m in msgs if topic == t.stage_changes and m["to_stage"] ==
              "recycled"]
    assert (move["lead_id"], move["from_stage"]) == (LEAD, "mql"), move
    doc = await poll(lambda: worker.get(f"/leads/{LEAD}"),
                      lambda r: r[0] == 200 and r[1]["stage"] == "recycled", 30)
    assert doc[1]["hot"] is False
    # engagement decayed for 106 days (idle after 14, half-life 30): 64 * 0.5 ** (106/30)
    assert doc[1]["scores"]["engagement"] == pytest.approx(5.53, abs=0.02)
    assert doc[1]["scores"]["fit"] == 40.0  # fit does not decay, and does not keep it an MQL

    # back a minute later, as engaged as before: an MQL again, and a second alert
    await send(_engaged(LATER + timedelta(minutes=1), "b"))
    got = await consume(iso.bootstrap, [sales], until=lambda m: len(m) >= 2, timeout=90)
    assert len(got) == 2, got
    second = got[1][2]
    assert (second["lead_id"], second["kind"]) == (LEAD, "hot_score"), second
    assert second["alert_id"] != first["alert_id"]
    doc = await poll(lambda: worker.get(f"/leads/{LEAD}"),
                      lambda r: r[0] == 200 and r[1]["stage"] == "mql", 30)
    assert doc[1]["hot"] is True
    assert doc[1]["owner"] == second["owner"]
