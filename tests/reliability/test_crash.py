"""SIGKILL the worker again and again while it processes; the end result is still exact.

A fixed event set from the simulator is split into K + 1 shares, one per worker lifetime.
Each worker is awaited on /readyz; the first half of its share trickles in (small steps),
then the second half comes as one burst, and the worker is killed (SIGKILL to its process
group) while it works on it: under at-least-once 0-100 ms after it started scoring it
(`leadflow_events_scored_total` moved), under exactly-once once ingest has started on it
(`leadflow_events_in_total` moved) and then at the first moment a transaction has written
records it has not committed yet (some topic's last stable offset is behind its end).
The next worker restarts from its RocksDB state and the changelogs. The test asserts that
kills landed inside batches: under at-least-once some inputs were read again after a restart
(events processed whose offsets were not yet committed: a successor drops them as already
scored, `leadflow_duplicates_total`, read from each worker before its kill; the traffic
itself repeats no messageId), under exactly-once some transactions were aborted. (Traffic
paced per lifetime, not over a fixed time: under exactly-once a restart can wait 6-15 s in
Faust's recovery for aborted transactions, and later kills then fell on idle workers.)
The last one is left to finish.
Then, per identified lead (see tests/support/reliability.py):
- scores and events_seen equal the pure core's over the generator's events (exact);
- the stage equals the core's over the order the score agent saw (exact);
- every stage change the core makes in that order was emitted: lost == 0, nothing
  unexpected; so was every alert and nurture/recycle hand-off (by its stable alert id);
  repeats of an output are allowed at least once and are counted.
Under exactly-once the outputs and the internal topics are read with read_committed, and
not one stage change or alert may come twice. The figures are printed on one line,
`crash-test: events=N kills=K lost=L duplicated=D ...` (lost and duplicated count stage
changes and alerts together; the details follow on the same line).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.simulator import Message
from tests.support.reliability import (
    OpenTransactions,
    aborted_records,
    alert_ids,
    events_per_lead,
    judge,
    make_isolated,
    messages,
    produce,
    reference,
    report,
    reread_inputs,
    seen_order,
    settled,
    stage_changes,
)
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VISITORS = 400
SEED = 11
KILLS = 5
PRODUCE_STEPS = 100
STEP_SECONDS = 0.35


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_sigkill_is_exact_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: object, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], capsys: pytest.CaptureFixture[str],
    guarantee: str,
) -> None:
    """Exact under both guarantees; under exactly-once each output also comes once."""
    from pathlib import Path

    iso = await make_isolated(kafka_bootstrap, Path(str(tmp_path)) / "home",
                              extra_env={"LEADFLOW_PROCESSING_GUARANTEE": guarantee})
    eos = guarantee == "exactly_once"
    msgs = messages(VISITORS, SEED)
    rng = random.Random(SEED)
    t0 = time.monotonic()
    timeline: list[float] = []

    size = -(-len(msgs) // PRODUCE_STEPS)
    steps = [msgs[i:i + size] for i in range(0, len(msgs), size)]
    per_life = -(-len(steps) // (KILLS + 1))
    lives = [steps[i:i + per_life] for i in range(0, len(steps), per_life)]

    async def trickle(share: list[list[Message]]) -> None:
        for step in share:
            await produce(producer, iso, step)
            await asyncio.sleep(STEP_SECONDS)

    async def burst(share: list[list[Message]]) -> None:
        await produce(producer, iso, [m for step in share for m in step])

    kills = 0
    repeats = 0.0  # events a worker dropped as already scored: read again after a kill
    restarts: list[float] = []  # seconds from each worker's start to its /readyz 200

    async def started() -> WorkerProcess:
        t = time.monotonic()
        w = worker_factory(iso)
        await w.wait_ready()
        restarts.append(round(time.monotonic() - t, 1))
        return w

    async def kill_inside_a_transaction(w: WorkerProcess, watch: OpenTransactions) -> str:
        """SIGKILL at the first moment a transaction has written records (5 s at most).

        Returns how long that took ("-" if no transaction was seen open)."""
        t = time.monotonic()
        seen: float | None = None
        while seen is None and time.monotonic() < t + 5:
            if await watch.any_open():
                seen = time.monotonic() - t
        w.stop(signal.SIGKILL)
        return "-" if seen is None else f"{seen:.3f}"

    inside: list[str] = []  # exactly-once: the wait for an open transaction, per kill
    w = await started()
    # Only exactly-once aims at transactions; the worker has made its topics by now.
    async with OpenTransactions(iso) if eos else contextlib.nullcontext() as watch:
        for life in range(KILLS):
            if life:
                w = await started()
            half = len(lives[life]) // 2
            await trickle(lives[life][:half])
            # Aim at a busy moment. At-least-once: once the score step has started on the
            # burst (its offsets are committed every few seconds, so what it just scored is
            # not yet). Exactly-once: once ingest has started on the burst, at the first
            # moment a transaction has written records it has not committed (any fixed delay
            # missed every transaction of the burst on a fast machine, where they are short).
            moved = "leadflow_events_in_total" if eos else "leadflow_events_scored_total"
            before = await w.metric(moved)
            await burst(lives[life][half:])
            deadline = time.monotonic() + 30
            while await w.metric(moved) <= before and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if eos:
                repeats += await w.metric("leadflow_duplicates_total")
                assert watch is not None
                inside.append(await kill_inside_a_transaction(w, watch))
            else:
                await asyncio.sleep(rng.uniform(0.0, 0.1))
                repeats += await w.metric("leadflow_duplicates_total")
                w.stop(signal.SIGKILL)
            kills += 1
            timeline.append(round(time.monotonic() - t0, 1))
    w = await started()
    for share in lives[KILLS:]:
        await trickle(share)
    timeline.append(round(time.monotonic() - t0, 1))
    docs = await settled(w, events_per_lead(msgs))
    repeats += await w.metric("leadflow_duplicates_total")
    timeline.append(round(time.monotonic() - t0, 1))
    order, replayed = await seen_order(iso, read_committed=eos)
    reread = await reread_inputs(iso)
    ref = reference(msgs, order)
    got = await stage_changes(iso, read_committed=eos)
    v = judge(ref, docs, got, await alert_ids(iso, read_committed=eos))
    aborted = await aborted_records(iso) if eos else 0
    lost = len(v.lost) + len(v.alerts_lost)
    duplicated = v.duplicated + v.alerts_duplicated
    report(capsys, " ".join([
        f"crash-test: events={len(msgs)} kills={kills} lost={lost} duplicated={duplicated}",
        f"open-transaction-seen-after-s={','.join(inside) if eos else '-'}",
        f"guarantee={guarantee} leads={len(ref.events)} replayed-inputs={replayed}",
        f"aborted-records={aborted} forwarded-again={reread} repeats-dropped={repeats:.0f}",
        f"stage-changes: lost={len(v.lost)} duplicated={v.duplicated} of {v.emitted}",
        f"({len(ref.moves)} expected) unexpected={len(v.unexpected)}",
        f"alerts: lost={len(v.alerts_lost)} duplicated={v.alerts_duplicated} of",
        f"{v.alerts_emitted} ({len(ref.alerts)} expected) unexpected={len(v.alerts_unexpected)}",
        f"stage-order-dependent-leads={v.stage_order_dependent} kill-times-s={timeline}",
        f"ready-after-start-s={restarts}",
        f"total-s={time.monotonic() - t0:.0f}",
    ]))
    assert not v.wrong_events, (v.wrong_events[:5], w.tail())
    assert not v.wrong_scores, [(k, docs[k]["scores"], ref.scores[k]) for k in v.wrong_scores[:5]]
    assert not v.wrong_stage, [(k, docs[k]["stage"], ref.stage[k]) for k in v.wrong_stage[:5]]
    assert not v.lost, v.lost[:10]
    assert not v.unexpected, v.unexpected[:10]
    assert not v.alerts_lost, v.alerts_lost[:10]
    assert not v.alerts_unexpected, v.alerts_unexpected[:10]
    # some kill landed inside a batch, else this was only a restart test
    if eos:
        assert aborted > 0, ("no transaction was aborted: no kill landed inside one", timeline)
    else:  # the traffic has no repeated messageId: each repeat is an input read again
        assert repeats + sum(reread.values()) > 0, (
            "no input was read again: no kill landed between processing and committing",
            timeline)
    if eos:
        assert v.duplicated == 0
        assert v.alerts_duplicated == 0
        # The internal topics too: a replayed input under exactly-once is a transaction
        # that was committed twice.
        assert replayed == 0
