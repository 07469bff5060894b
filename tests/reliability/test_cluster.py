"""Three workers on a three-broker cluster, twelve partitions; one broker and one worker die.

A dedicated 3-node KRaft cluster on loopback (`LocalCluster`: every node broker+controller,
256 MB heap, internal topics replicated 3 with min ISR 2), leadflow's topics made by the
project's topics code with 12 partitions and replication factor 3, three `leadflow worker`
processes (standby replicas 1, each its own data folder, as on three machines) given the
comma-separated bootstrap of all three nodes. A fixed generated event set trickles in from a
plain aiokafka producer (acks=all). Mid-stream one broker gets SIGKILL (the group
coordinator of the workers' consumer group, so that the group must find a new one) and is
not restarted: with min ISR 2 the two left keep accepting acks=all writes. Later one worker
gets SIGKILL and is not restarted: the other two take its partitions once its session expires.

Then, as in test_crash.py (see harness.py): every identified lead's scores and events_seen
equal the pure core's offline result, its stage equals the core's over the order the score
agent saw, and every stage change the core makes in that order was emitted (lost == 0,
nothing unexpected; at-least-once repeats are counted and printed).

Status (2026-11-23, faust-streaming 0.15.3, aiokafka 0.14.0): fails in 3 of 5 runs. After the
worker's SIGKILL, the survivor that takes over one of its events.web partitions never ingests
one producer batch (e.g. offsets 137-140, produced while it recovered) but does ingest the
records before and after; no dead letter, no error. The group's committed offset then either
stops below the hole or (seen once, in a run without the broker kill) passes it: lost for good.
Consistent with faust #606 (commit across offset gaps; fix #707 unmerged). The diagnostics on
failure (lag per partition, how far the missing events got) come from this test.

Since the inputs are read by a plain aiokafka consumer (stream/inputs.py) the input
partitions no longer lose records; the same hole then shows on the Faust-read internal
topic: in a run on main, 4 leads' 28 events were on <app>-leads but never scored, and the
group's committed offsets were at the end (no lag): Faust committed past the hole. The
workers now notice such a jump (stream/offsets.py: offsets of a partition must not jump on
our non-transactional topics), seek back to read the skipped records again, and no longer
let Faust commit across a jump (its `_add_gap` is disabled under at-least-once). Of the next
four runs one still failed (detail not captured); a hole right at takeover, before any
record of the partition was seen, went unnoticed then, so the first record after an
assignment is now checked against the committed offset too. Of 9 runs with the repair 5
passed; of the 4 failures one was a survivor exiting on an exception in a timer (fixed:
timers are guarded), three were not captured (xfail prints no traceback: run with
--runxfail). The repair has not been seen to act on a real hole ("skipped by the consumer"
in a worker log): the test stays an expected failure, not strict; it runs and prints its
figures in every CI run.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.kafka.cluster import LocalCluster
from pipeline.kafka.topics import changelog_topic
from pipeline.simulator import Message
from pipeline.stream.codec import decode_event, unpack
from tests.conftest import KAFKA_VERSION
from tests.reliability.harness import (
    TICK_PREFIX,
    _stitched,
    events_per_lead,
    judge,
    lead_docs,
    make_isolated,
    messages,
    produce,
    read_all,
    reference,
    report,
    seen_order,
    settled,
    stage_changes,
)
from tests.stream.workers import Isolated, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

BROKERS = 3
WORKERS = 3
PARTITIONS = 12
VISITORS = 800  # 3,390 events
SEED = 47
PRODUCE_STEPS = 80
PRODUCE_SECONDS = 40.0
KILL_BROKER_AT_S = 12.0
KILL_WORKER_AT_S = 24.0
SETTLE_TIMEOUT_S = 150.0


@pytest.fixture
def cluster(tmp_path: Path, kafka_jars: Path) -> Iterator[LocalCluster]:
    """A 3-node cluster of its own (one node is killed in the test); always stopped."""
    c = LocalCluster(tmp_path / "kafka", kafka_jars, KAFKA_VERSION, nodes=BROKERS, heap_mb=256)
    try:
        c.start(timeout_s=180)
        yield c
    finally:
        c.stop()


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    return admin


async def _replication(bootstrap: str, topics: list[str]) -> dict[str, set[int]]:
    """Per topic: the set of replica counts over its partitions (an error code as -code).

    Asked again for a while when a broker does not know a topic yet: each broker's
    metadata cache catches up with a new topic on its own.
    """
    deadline = time.monotonic() + 30
    while True:
        admin = await _admin(bootstrap)
        try:
            meta = await admin.describe_topics(topics)
        finally:
            await admin.close()
        out = {m["topic"]: ({len(p["replicas"]) for p in m["partitions"]}
                            if m["error_code"] == 0 else {-m["error_code"]}) for m in meta}
        if all(min(v) >= 0 for v in out.values()) or time.monotonic() > deadline:
            return out
        await asyncio.sleep(0.5)


async def _coordinator(bootstrap: str, group: str, timeout: float = 60.0) -> int:
    """The broker that coordinates `group` (retried: right after a join it may still move)."""
    deadline = time.monotonic() + timeout
    while True:
        admin = await _admin(bootstrap)
        try:
            return int(await admin.find_coordinator(group))
        except Exception:
            if time.monotonic() > deadline:
                raise
        finally:
            await admin.close()
        await asyncio.sleep(1.0)


async def _group_lag(bootstrap: str, group: str) -> dict[str, str]:
    """Partitions the workers' group is behind on: "topic[p]" -> "committed/end"."""
    admin = await _admin(bootstrap)
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        ends = await c.end_offsets(list(committed))
    finally:
        await c.stop()
    return {f"{tp.topic}[{tp.partition}]": f"{meta.offset}/{ends[tp]}"
            for tp, meta in sorted(committed.items()) if meta.offset < ends[tp]}


async def _where_stuck(iso: Isolated, msgs: list[Message], leads: list[str]) -> str:
    """For the leads that are behind: how many of their events each stage has passed
    (ingest -> <app>-identity, stitch -> <app>-leads) and how many were dead-lettered."""
    app_id = iso.env["LEADFLOW_APP_ID"]
    wanted = {e.message_id for lead, e in _stitched(msgs) if lead in set(leads)}

    async def ids(topic: str) -> set[str]:
        out = set()
        for r in await read_all(iso.bootstrap, [topic], idle_s=2.0):
            for line in unpack(r.value or b""):  # envelopes: many events per record
                if not line.startswith(TICK_PREFIX):
                    out.add(decode_event(line).message_id)
        return out

    ingested = await ids(f"{app_id}-identity") & wanted
    stitched = await ids(f"{app_id}-leads") & wanted
    dead = await read_all(iso.bootstrap, [iso.settings.topics.deadletter], idle_s=2.0)
    return (f"events of the {len(leads)} leads behind: {len(wanted)}, past ingest "
            f"{len(ingested)}, past stitch {len(stitched)}; dead letters in all: {len(dead)}")


def _worker_iso(iso: Isolated, home: Path) -> Isolated:
    # Each worker has its own data folder (RocksDB locks it), as on its own machine.
    other = copy.copy(iso)
    other.env = {**iso.env, "LEADFLOW_HOME": str(home)}
    return other


@pytest.mark.xfail(strict=False, reason="Faust's consumer can skip and commit past records "
                   "of a SIGKILLed worker's partitions on takeover (faust #606); see docstring")
async def test_three_workers_three_brokers_one_of_each_killed_result_is_exact(
    cluster: LocalCluster, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = time.monotonic()
    bootstrap = cluster.bootstrap
    assert bootstrap.count(",") == BROKERS - 1
    iso = await make_isolated(bootstrap, tmp_path / "home", partitions=PARTITIONS,
                              replication_factor=BROKERS,
                              extra_env={"LEADFLOW_STANDBY_REPLICAS": "1"})
    app_id = iso.env["LEADFLOW_APP_ID"]
    t = iso.settings.topics
    ours = [t.web, t.stage_changes, t.deadletter, f"{app_id}-leads",
            changelog_topic(app_id, "leads")]
    assert await _replication(bootstrap, ours) == {name: {BROKERS} for name in ours}

    msgs = messages(VISITORS, SEED)
    workers = [worker_factory(_worker_iso(iso, tmp_path / f"home{i}")) for i in range(WORKERS)]
    for w in workers:
        await w.wait_ready(timeout=180)
    ready_s = time.monotonic() - t0
    # Everything that exists only once the workers run: the group's offsets and Faust's
    # leader topic, replicated like the rest (a single-broker default would say 1 here).
    late = ["__consumer_offsets", f"{app_id}-__assignor-__leader"]
    assert await _replication(bootstrap, late) == {name: {BROKERS} for name in late}
    coordinator = await _coordinator(bootstrap, app_id)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, request_timeout_ms=60000)
    await producer.start()
    try:
        async def trickle() -> None:
            size = -(-len(msgs) // PRODUCE_STEPS)
            for i in range(0, len(msgs), size):
                await produce(producer, iso, msgs[i:i + size])
                await asyncio.sleep(PRODUCE_SECONDS / PRODUCE_STEPS)

        start = time.monotonic()
        producing = asyncio.create_task(trickle())
        timeline: dict[str, float] = {}

        await asyncio.sleep(KILL_BROKER_AT_S)
        assert not producing.done(), "traffic ended before the broker kill: kill lands idle"
        cluster.kill(coordinator)
        timeline["broker-killed"] = time.monotonic() - start
        survivors = set(cluster.nodes) - {coordinator}
        await asyncio.to_thread(cluster.wait_brokers, survivors, 60.0)
        timeline["broker-fenced"] = time.monotonic() - start

        await asyncio.sleep(max(0.0, KILL_WORKER_AT_S - (time.monotonic() - start)))
        assert not producing.done(), "traffic ended before the worker kill: kill lands idle"
        victim = 0
        workers[victim].stop(signal.SIGKILL)
        timeline["worker-killed"] = time.monotonic() - start
        alive = [w for i, w in enumerate(workers) if i != victim]

        await asyncio.wait_for(producing, timeout=180)
        timeline["produced"] = time.monotonic() - start
    finally:
        await producer.stop()
    for w in alive:
        assert w.proc is not None and w.proc.poll() is None, f"a survivor died:\n{w.tail()}"

    try:
        docs = await settled(alive[0], events_per_lead(msgs), timeout=SETTLE_TIMEOUT_S)
    except AssertionError as exc:
        lag = {**await _group_lag(bootstrap, f"{app_id}-ingest"),
               **await _group_lag(bootstrap, app_id)}
        expected = events_per_lead(msgs)
        now = await lead_docs(alive[0], sorted(expected))
        behind = [k for k, n in expected.items()
                  if now.get(k) is None or now[k]["events_seen"] < n]
        stuck = await _where_stuck(iso, msgs, behind)
        tails = "\n".join(f"--- survivor {i}:\n{w.tail(15)}" for i, w in enumerate(alive))
        raise AssertionError(
            f"not all events processed {SETTLE_TIMEOUT_S:.0f} s after the traffic ended "
            f"(killed broker {coordinator}, worker {victim}; timeline {timeline}); "
            f"the group's committed/end offsets were behind: {lag}; {stuck}\n{exc}\n{tails}"
        ) from None
    timeline["settled"] = time.monotonic() - start
    # Both survivors answer for every lead (each forwards to the partition's owner now).
    sample = sorted(docs)[:: max(1, len(docs) // 20)]
    for lead in sample:
        status, doc = await alive[1].get(f"/leads/{lead}")
        assert status == 200 and doc["events_seen"] == docs[lead]["events_seen"], (lead, doc)
    order, replayed = await seen_order(iso)
    ref = reference(msgs, order)
    v = judge(ref, docs, await stage_changes(iso))
    # The killed node stayed down for the whole run (nothing restarted it).
    assert cluster.alive() == sorted(survivors)
    times = " ".join(f"{k}={s:.0f}s" for k, s in timeline.items())
    line: dict[str, Any] = {
        "brokers": BROKERS, "workers": WORKERS, "partitions": PARTITIONS, "events": len(msgs),
        "killed_broker": f"{coordinator}(group-coordinator)", "killed_worker": victim,
        "lost": len(v.lost), "duplicated": v.duplicated,
    }
    report(capsys, "cluster-test: " + " ".join(f"{k}={x}" for k, x in line.items())
           + f" leads={len(ref.events)} stage-changes={v.emitted}/{len(ref.moves)}-expected"
           f" unexpected={len(v.unexpected)} replayed-inputs={replayed}"
           f" ready={ready_s:.0f}s {times} total={time.monotonic() - t0:.0f}s")
    assert not v.wrong_events, [(k, docs[k]["events_seen"], ref.events[k])
                                for k in v.wrong_events[:5]]
    assert not v.wrong_scores, [(k, docs[k]["scores"], ref.scores[k]) for k in v.wrong_scores[:5]]
    assert not v.wrong_stage, [(k, docs[k]["stage"], ref.stage[k]) for k in v.wrong_stage[:5]]
    assert not v.lost, v.lost[:10]
    assert not v.unexpected, v.unexpected[:10]
