"""The main job against the real broker: plain clients in, plain clients out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.scenario import T0, offline_moves, scenario, ts
from tests.support.workers import Isolated, WorkerProcess, consume, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

async def _produce(producer: AIOKafkaProducer, iso: Isolated,
                   messages: list[tuple[str, dict[str, Any]]], *, settle: bool = True) -> None:
    """Send with a plain producer; at each switch of input topic wait until the moves
    expected so far were emitted: Kafka orders a key's messages within a topic only."""
    t = iso.settings.topics
    topic = {"web": t.web, "email": t.email, "product": t.product, "crm": t.crm}
    for i, (src, body) in enumerate(messages):
        key = (body.get("userId") or body.get("anonymousId") or "").encode()
        await producer.send_and_wait(topic[src], orjson.dumps(body), key=key)
        nxt = messages[i + 1][0] if i + 1 < len(messages) else src
        if settle and nxt != src:
            n = len(offline_moves(messages[: i + 1]))
            await consume(iso.bootstrap, [t.stage_changes], until=lambda o, n=n: len(o) >= n)


async def _settled(worker: WorkerProcess, lead: str, *, events: int,
                   timeout: float = 60) -> dict[str, Any]:
    """The lead document once the worker has scored `events` distinct events of the lead."""
    deadline = asyncio.get_running_loop().time() + timeout
    doc: Any = None
    while asyncio.get_running_loop().time() < deadline:
        status, doc = await worker.get(f"/leads/{lead}")
        if status == 200 and doc["events_seen"] >= events:
            assert doc["events_seen"] == events
            return dict(doc)
        await asyncio.sleep(0.3)
    raise AssertionError(f"lead {lead} not settled: {doc}\n{worker.tail()}")


async def test_scenario_stage_changes_and_alert_reach_plain_consumers(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
) -> None:
    worker = worker_factory(isolated)
    await worker.wait_ready()
    msgs = scenario("anon-1", "u-1")
    await _produce(producer, isolated, msgs)
    expected = offline_moves(msgs)
    assert [m[2] for m in expected][-2:] == ["sal", "opportunity"]  # the story's end

    t = isolated.settings.topics
    got = await consume(isolated.bootstrap, [t.stage_changes],
                        until=lambda out: len(out) >= len(expected))
    applied = [(d["lead_id"], d["from_stage"], d["to_stage"]) for _, _, d in got
               if d.get("status", "applied") == "applied"]
    assert applied == expected, worker.tail()
    assert all(k == b"u-1" for _, k, _ in got)

    # the demo request is an instant trigger: an alert on a team routing topic
    alerts = await consume(isolated.bootstrap, [t.routing(team) for team in
                                                ("sales", "enterprise", "smb", "emea")],
                           until=lambda out: len(out) >= 1, timeout=30)
    assert alerts, worker.tail()
    assert alerts[0][2]["lead_id"] == "u-1"

    # The moves are sent before the lead's table write: wait for the write.
    await poll(lambda: worker.get("/leads/u-1"),
               lambda r: r[0] == 200 and r[1]["stage"] == "opportunity", timeout=30)
    status, _ = await worker.get("/leads/nobody")
    assert status == 404


async def test_bad_messages_go_to_deadletter_with_reason_and_origin(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
) -> None:
    worker = worker_factory(isolated)
    await worker.wait_ready()
    t = isolated.settings.topics
    bad = [b"{not json", b"[1,2]", orjson.dumps({"type": "track", "event": "X"}),
           orjson.dumps({"type": "track", "messageId": "m", "userId": "u", "event": 5,
                         "timestamp": T0})]
    for raw in bad:
        await producer.send_and_wait(t.web, raw, key=b"k")
    got = await consume(isolated.bootstrap, [t.deadletter], until=lambda out: len(out) >= 4)
    reasons = [d["reason"] for _, _, d in got]
    assert reasons == ["bad_json", "not_an_object", "missing_id", "invalid"], worker.tail()
    import base64

    assert [base64.b64decode(d["value_b64"]) for _, _, d in got] == bad
    assert {d["source_topic"] for _, _, d in got} == {t.web}
    assert sorted(d["offset"] for _, _, d in got) == sorted({d["offset"] for _, _, d in got})


async def test_restart_keeps_state_and_scores_nothing_twice(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
) -> None:
    msgs = scenario("anon-2", "u-2")
    first, rest = msgs[:9], msgs[9:]
    worker = worker_factory(isolated)
    await worker.wait_ready()
    await _produce(producer, isolated, first)
    t = isolated.settings.topics
    n_first = len(offline_moves(first))
    await consume(isolated.bootstrap, [t.stage_changes], until=lambda o: len(o) >= n_first)
    before = await _settled(worker, "u-2", events=len(first))
    assert worker.stop() == 0

    worker2 = worker_factory(isolated)
    await worker2.wait_ready()
    _, after = await worker2.get("/leads/u-2")
    assert after["scores"] == before["scores"] and after["stage"] == before["stage"]
    # the same events again (a producer retry) plus the rest of the story
    await _produce(producer, isolated, first + rest)
    # Then a sentinel for the same lead, after everything else on its topic: once its move
    # is out, a wrongly repeated move would have been emitted before it.
    sentinel = ("crm", {"type": "track", "messageId": "u-2-sentinel", "userId": "u-2",
                        "timestamp": ts(12), "event": "Deal Won", "properties": {}})
    await _produce(producer, isolated, [sentinel], settle=False)
    expected = offline_moves([*msgs, sentinel])
    assert expected[-1] == ("u-2", "opportunity", "customer")
    got = await consume(isolated.bootstrap, [t.stage_changes],
                        until=lambda o: any(d["to_stage"] == "customer" for _, _, d in o))
    applied = [(d["lead_id"], d["from_stage"], d["to_stage"]) for _, _, d in got
               if d.get("status", "applied") == "applied"]
    assert applied == expected
    final = await _settled(worker2, "u-2", events=len(msgs) + 1)
    assert final["stage"] == "customer"


async def test_decay_timer_recycles_a_quiet_mql_without_new_events(
    kafka_bootstrap: str, tmp_path: Any, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    # The story's events are from 2026-03: by wall-clock time both leads have been idle far
    # longer than the rules' 14 days, so the first timer run decays them. Only the MQL may
    # move (to recycled): with a poor fit (which never decays) its total falls below the
    # recycle line. The plain lead has nowhere to decay to.
    iso = Isolated(kafka_bootstrap, tmp_path / "home",
                   extra_env={"LEADFLOW_DECAY_CHECK_INTERVAL_S": "2"})
    worker = worker_factory(iso)
    await worker.wait_ready()
    mql, plain = scenario("anon-d", "u-d")[:9], scenario("anon-e", "u-e")[:3]
    mql[2][1]["traits"].update({"title": "Intern", "employees": 2, "email": "d@gmail.com"})
    assert offline_moves(mql)[-1][2] == "mql" and offline_moves(plain)[-1][2] == "lead"
    await _produce(producer, iso, mql + plain, settle=False)
    t = iso.settings.topics
    got = await consume(iso.bootstrap, [t.stage_changes],
                        until=lambda out: any(d["to_stage"] == "recycled" for _, _, d in out),
                        timeout=60)
    moves = [(d["lead_id"], d["from_stage"], d["to_stage"]) for _, _, d in got
             if d.get("status", "applied") == "applied"]
    assert moves[-1] == ("u-d", "mql", "recycled"), worker.tail()
    assert ("u-e", "lead", "recycled") not in moves
    recycled = [d for _, _, d in got if d["to_stage"] == "recycled"]
    assert len(recycled) == 1 and recycled[0]["cause"]["rule"] == "decay", recycled
    # The move is sent before the lead's table write (send, ack, write, commit): wait for it.
    await poll(lambda: worker.get("/leads/u-d"),
               lambda r: r[0] == 200 and r[1]["stage"] == "recycled", timeout=30)
    # marketing hears of it on the recycle routing topic
    back = await consume(iso.bootstrap, [t.recycle], until=lambda out: len(out) >= 1,
                         timeout=30)
    assert [d["lead_id"] for _, _, d in back] == ["u-d"]
