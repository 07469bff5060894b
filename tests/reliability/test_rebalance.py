"""Two workers share the partitions; one stops mid-stream and the other takes over, exactly.

Standby replicas 1, so the survivor already holds a copy of the other's tables. Traffic
trickles in while both run; one worker gets SIGTERM (a clean leave: the group rebalances at
once) or SIGKILL (the group notices when its session expires, `BROKER_SESSION_TIMEOUT`);
the survivor finishes. Checks as in test_crash.py (see tests/support/reliability.py).

The takeover time is printed, not asserted: seconds from the stop to the first alert on a
team's routing topic (its record timestamp) for a lead of a partition the stopped worker
held (`takeover-s`, with how many such alerts came after the stop).
"""

from __future__ import annotations

import asyncio
import copy
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.reliability import (
    alert_ids,
    events_per_lead,
    judge,
    lead_partitions,
    make_isolated,
    messages,
    produce,
    reference,
    report,
    seen_order,
    settled,
    stage_changes,
    takeover_s,
    team_alert_times,
)
from tests.support.workers import WorkerProcess, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 60
SECONDS = 18.0


@pytest.mark.parametrize(("guarantee", "stop"), [
    ("at_least_once", signal.SIGTERM), ("exactly_once", signal.SIGTERM),
    ("at_least_once", signal.SIGKILL), ("exactly_once", signal.SIGKILL),
], ids=["at_least_once-sigterm", "exactly_once-sigterm", "at_least_once-sigkill",
        "exactly_once-sigkill"])
async def test_survivor_takes_over_and_result_is_exact(
    kafka_bootstrap: str, tmp_path: Path, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], capsys: pytest.CaptureFixture[str],
    guarantee: str, stop: signal.Signals,
) -> None:
    eos = guarantee == "exactly_once"
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home",
                              extra_env={"LEADFLOW_STANDBY_REPLICAS": "1",
                                         "LEADFLOW_PROCESSING_GUARANTEE": guarantee})
    msgs = messages(300, 31)
    w1 = worker_factory(iso)
    await w1.wait_ready()
    # Each worker has its own data folder (RocksDB locks it), as on two machines.
    iso2 = copy.copy(iso)
    iso2.env = {**iso.env, "LEADFLOW_HOME": str(tmp_path / "home2")}
    w2 = worker_factory(iso2)
    await w2.wait_ready()
    await w1.wait_ready()

    async def trickle() -> None:
        size = -(-len(msgs) // STEPS)
        for i in range(0, len(msgs), size):
            await produce(producer, iso, msgs[i:i + size])
            await asyncio.sleep(SECONDS / STEPS)

    leads_topic = f"{iso.env['LEADFLOW_APP_ID']}-leads"
    all_parts = set(range(iso.settings.partitions))

    async def split() -> tuple[set[int], set[int]]:
        return await w1.partitions(leads_topic), await w2.partitions(leads_topic)

    producing = asyncio.create_task(trickle())
    await asyncio.sleep(SECONDS / 3)
    # Both workers hold their share, each partition once: what w1 holds is what moves.
    held, _ = await poll(split, lambda p: p[0] and p[1] and not p[0] & p[1]
                         and p[0] | p[1] == all_parts, 30.0)
    stopped_at = time.time()
    code = w1.stop(stop)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL), w1.tail()
    await producing
    docs = await settled(w2, events_per_lead(msgs))
    order, replayed = await seen_order(iso, read_committed=eos)
    ref = reference(msgs, order)
    v = judge(ref, docs, await stage_changes(iso, read_committed=eos),
              await alert_ids(iso, read_committed=eos))
    took, after = takeover_s(stopped_at, held, await lead_partitions(iso, read_committed=eos),
                             await team_alert_times(iso, read_committed=eos))
    report(capsys, f"rebalance-test[{guarantee},{stop.name}]: events={len(msgs)} "
           f"leads={len(ref.events)} "
           f"replayed-inputs={replayed} lost={len(v.lost)} duplicated={v.duplicated} "
           f"(of {v.emitted} stage changes, {len(ref.moves)} expected) "
           f"unexpected={len(v.unexpected)} alerts: lost={len(v.alerts_lost)} "
           f"duplicated={v.alerts_duplicated} of {v.alerts_emitted} "
           f"takeover-s={'none' if took is None else f'{took:.1f}'} "
           f"(partitions moved {sorted(held)}, {after} of their alerts after the stop)")
    assert not v.wrong_events and not v.wrong_scores, (v.wrong_events[:5], v.wrong_scores[:5])
    assert not v.wrong_stage, v.wrong_stage[:5]
    assert not v.lost, v.lost[:10]
    assert not v.unexpected, v.unexpected[:10]
    assert not v.alerts_lost and not v.alerts_unexpected, (v.alerts_lost[:10],
                                                          v.alerts_unexpected[:10])
    if eos:
        assert v.duplicated == 0 and v.alerts_duplicated == 0 and replayed == 0
