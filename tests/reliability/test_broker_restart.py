"""The broker goes away mid-stream and comes back; the worker resumes by itself, exactly.

A dedicated LocalBroker (not the session one: it is stopped in the middle of the test) in
tmp_path. Half the events are produced and scored, the broker is stopped, the worker keeps
running without it for a few seconds, the broker starts again on the same data folder and
the same port, and the rest is produced. The checks are those of test_crash.py: scores and
events_seen exact, stage exact for the order the score agent saw, no stage change lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.devkafka.broker import LocalBroker
from tests.conftest import KAFKA_VERSION
from tests.support.reliability import (
    events_per_lead,
    judge,
    make_isolated,
    messages,
    produce,
    reference,
    report,
    seen_order,
    settled,
    stage_changes,
)
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path: Path, kafka_jars: Path) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path / "kafka", kafka_jars, KAFKA_VERSION, heap_mb=384)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_worker_resumes_after_broker_restart_and_result_is_exact(
    own_broker: LocalBroker, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = own_broker.bootstrap
    port = own_broker.port
    iso = await make_isolated(bootstrap, tmp_path / "home")
    msgs = messages(200, 23)
    half = len(msgs) // 2
    w = worker_factory(iso)
    await w.wait_ready()

    async def send(part: list) -> None:  # type: ignore[type-arg]
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await p.start()
        try:
            await produce(p, iso, part)
        finally:
            await p.stop()

    await send(msgs[:half])
    await settled(w, events_per_lead(msgs[:half]))
    own_broker.stop()
    await asyncio.sleep(5)
    assert w.proc is not None and w.proc.poll() is None, w.tail()
    own_broker.start()
    assert own_broker.port == port  # same address: the worker's bootstrap still points at it
    await send(msgs[half:])
    docs = await settled(w, events_per_lead(msgs), timeout=150)
    order, replayed = await seen_order(iso)
    ref = reference(msgs, order)
    v = judge(ref, docs, await stage_changes(iso))
    report(capsys, f"broker-restart-test: events={len(msgs)} leads={len(ref.events)} "
           f"replayed-inputs={replayed} lost={len(v.lost)} duplicated={v.duplicated} "
           f"(of {v.emitted} stage changes, "
           f"{len(ref.moves)} expected) unexpected={len(v.unexpected)}")
    assert not v.wrong_events and not v.wrong_scores, (v.wrong_events[:5], v.wrong_scores[:5])
    assert not v.wrong_stage, v.wrong_stage[:5]
    assert not v.lost, v.lost[:10]
    assert not v.unexpected, v.unexpected[:10]
