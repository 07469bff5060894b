"""A standby's store follows its changelog between rebalances: caught up, exactly.

Two workers with standby replicas 1 (each its own state folder) share the partitions, so
every partition of every table is a standby on one of them; the first worker held all of
them as actives before the second joined. Traffic is scored, then the leads changelog gets
keys overwritten, one deleted by a tombstone and, under exactly-once, an aborted
transaction writing a new key and a wrong value for a real lead. Every standby partition
(the owners table's, with only a few records, too) must then report, in /readyz, a stored
offset at the changelog's end; and its RocksDB, read with its persisted offset from one
read-only open, must hold exactly the changelog's last committed value of every key up to
that offset.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.kafka.topics import DEFAULT_TABLES
from tests.support.reliability import events_per_lead, make_isolated, messages, produce, settled
from tests.support.stores import (
    changelog,
    changelog_records,
    last_values,
    stored_partitions,
    tamper,
)
from tests.support.workers import Isolated, WorkerProcess, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Part = tuple[str, int]


async def changelog_ends(iso: Isolated, *, eos: bool) -> dict[Part, int]:
    """Each table partition's changelog end (the last stable offset under exactly-once)."""
    c = AIOKafkaConsumer(bootstrap_servers=iso.bootstrap, group_id=None,
                         isolation_level="read_committed" if eos else "read_uncommitted")
    await c.start()
    try:
        tps = {TopicPartition(changelog(iso, t), p): (t, p) for t in DEFAULT_TABLES
               for p in range(iso.settings.partitions)}
        ends = await c.end_offsets(list(tps))
    finally:
        await c.stop()
    return {tps[tp]: end for tp, end in ends.items()}


async def standbys(worker: WorkerProcess) -> dict[Part, dict[str, Any]]:
    _, body = await worker.get("/readyz")
    return {(table, int(p)): pos for table, parts in body["standbys"].items()
            for p, pos in parts.items()}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_every_standby_store_follows_its_changelog_exactly(
    kafka_bootstrap: str, tmp_path: Path, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], guarantee: str,
) -> None:
    eos = guarantee == "exactly_once"
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home",
                              extra_env={"LEADFLOW_STANDBY_REPLICAS": "1",
                                         "LEADFLOW_PROCESSING_GUARANTEE": guarantee})
    msgs = messages(200, 53)
    w1 = worker_factory(iso)
    await w1.wait_ready()
    await produce(producer, iso, msgs[:len(msgs) // 2])  # w1 alone: every partition active
    iso2 = copy.copy(iso)
    iso2.env = {**iso.env, "LEADFLOW_HOME": str(tmp_path / "home2")}
    w2 = worker_factory(iso2)
    await w2.wait_ready()
    await w1.wait_ready()
    await produce(producer, iso, msgs[len(msgs) // 2:])
    docs = await settled(w1, events_per_lead(msgs))
    keys = await tamper(iso, kafka_bootstrap, producer, eos=eos,
                        real_lead=sorted(docs)[0].encode())
    every = {(t, p) for t in DEFAULT_TABLES for p in range(iso.settings.partitions)}

    async def caught_up() -> tuple[dict[Part, int], list[dict[Part, dict[str, Any]]]]:
        return await changelog_ends(iso, eos=eos), [await standbys(w) for w in (w1, w2)]

    def all_at_end(state: tuple[dict[Part, int], list[dict[Part, dict[str, Any]]]]) -> bool:
        ends, held = state
        return (not set(held[0]) & set(held[1]) and set(held[0]) | set(held[1]) == every
                and all(pos["stored"] == ends[tp] - 1 for h in held for tp, pos in h.items()))

    ends, held = await poll(caught_up, all_at_end, 60.0)
    records, topics = await changelog_records(iso, eos=eos)
    held_keys: set[bytes] = set()
    for worker, home, mine in ((w1, tmp_path / "home", held[0]),
                               (w2, tmp_path / "home2", held[1])):
        stores = stored_partitions(home, iso)
        for tp in sorted(mine):
            stored, items = stores.get(tp, (None, {}))
            offset = -1 if stored is None else stored  # -1: nothing to hold yet
            assert offset >= ends[tp] - 1, (tp, offset, ends[tp])
            want = last_values(records, topics, upto={tp: offset}).get(tp, {})
            assert items == want, (worker.log_path, tp, offset)
            held_keys |= set(items)
    # the changelog's own overwrite, tombstone and aborted transaction, as read committed
    assert keys["overwritten"] in held_keys and keys["deleted"] not in held_keys
    assert keys["aborted"] not in held_keys
