"""LocalCluster: three real KRaft nodes; one dies, writes with acks=all go on, it comes back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.devkafka.cluster import LocalCluster
from pipeline.errors import BrokerError
from pipeline.kafka.topics import TopicSpec, ensure_topics
from tests.conftest import KAFKA_VERSION


def test_node_properties_name_every_voter_and_replicate_internal_topics(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, tmp_path / "jars", KAFKA_VERSION, nodes=3)
    for i, node in c.nodes.items():
        node.port, node.controller_port = 9000 + i, 9100 + i
    props = c.node_properties(c.nodes[2])
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103")
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["min.insync.replicas"] == "2"
    assert c.bootstrap == "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"
    assert c.bootstrap_of([1, 3]) == "127.0.0.1:9001,127.0.0.1:9003"
    # Two nodes: min ISR 2 would stop every write when either dies.
    two = LocalCluster(tmp_path / "two", tmp_path / "jars", KAFKA_VERSION, nodes=2)
    assert two.node_properties(two.nodes[1])["min.insync.replicas"] == "1"


def test_nodes_of_different_clusters_are_refused(tmp_path: Path) -> None:
    for i, cid in ((1, "AAAAAAAAAAAAAAAAAAAAAA"), (2, "BBBBBBBBBBBBBBBBBBBBBB")):
        data = tmp_path / f"node-{i}" / "data"
        data.mkdir(parents=True)
        (data / "meta.properties").write_text(f"cluster.id={cid}\nnode.id={i}\n")
    with pytest.raises(BrokerError, match="different clusters"):
        LocalCluster(tmp_path, tmp_path / "jars", KAFKA_VERSION, nodes=3)


async def _partitions(bootstrap: str, topic: str, wait_s: float = 10.0) -> list[dict[str, Any]]:
    # Each broker updates its metadata cache on its own: a fresh topic can be unknown (3) to
    # the broker asked (a random one) for a moment after another one has it.
    deadline = time.monotonic() + wait_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            (meta,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        if meta["error_code"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert meta["error_code"] == 0, meta
    return list(meta["partitions"])


async def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         request_timeout_ms=60000)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=v) for v in values]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _read(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[bytes]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out.extend(r.value for r in recs if r.value is not None)
    finally:
        await c.stop()
    return out


@pytest.mark.integration
@pytest.mark.slow
async def test_one_node_killed_writes_go_on_and_it_rejoins(
    tmp_path: Path, kafka_jars: Path
) -> None:
    c = LocalCluster(tmp_path / "kafka", kafka_jars, KAFKA_VERSION, nodes=3, heap_mb=256)
    try:
        await asyncio.to_thread(c.start, 180.0)
        ids, controller = c.brokers()
        assert ids == {1, 2, 3} and controller in ids
        topic = f"cluster.{uuid.uuid4().hex[:8]}"
        await ensure_topics(c.bootstrap, [TopicSpec(topic, 3, 3)])
        parts = await _partitions(c.bootstrap, topic)
        assert [(len(p["replicas"]), len(p["isr"])) for p in parts] == [(3, 3)] * 3
        before = [f"a{i}".encode() for i in range(100)]
        await _send(c.bootstrap, topic, before)

        victim = parts[0]["leader"]  # a partition leader: its partitions must move
        c.kill(victim)
        rest = sorted(set(c.nodes) - {victim})
        assert c.alive() == rest
        await asyncio.to_thread(c.wait_brokers, set(rest), 60.0)
        after = [f"b{i}".encode() for i in range(100)]
        await _send(c.bootstrap, topic, after)  # min ISR 2 of RF 3: still accepted
        parts = await _partitions(c.bootstrap_of(rest), topic)
        assert all(p["leader"] in rest and victim not in p["isr"] for p in parts), parts
        assert sorted(await _read(c.bootstrap, topic, 200)) == sorted(before + after)

        await asyncio.to_thread(c.restart, victim, 120.0)
        assert c.brokers()[0] == {1, 2, 3}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # it catches up and is in sync again
            parts = await _partitions(c.bootstrap, topic)
            if all(len(p["isr"]) == 3 for p in parts):
                break
            await asyncio.sleep(1)
        assert [len(p["isr"]) for p in parts] == [3, 3, 3], parts
    finally:
        await asyncio.to_thread(c.stop)
    assert c.alive() == []
