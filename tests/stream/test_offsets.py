"""OffsetWatch: a skipped record is noticed, re-reads and other partitions are not holes;
generation_starts: where reading must begin after an assignment (on a real broker);
read_range and the worker's use of it: skipped records read from the broker into the batch."""

from __future__ import annotations

import uuid
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from pipeline.settings import Settings
from pipeline.stream import app as app_mod
from pipeline.stream.offsets import OffsetWatch, generation_starts, read_range
from tests.conftest import NewTopic as NewTopicFactory


def test_a_jump_is_a_hole_from_the_first_skipped_offset() -> None:
    w = OffsetWatch()
    assert w.holes([("t", 0, 5), ("t", 0, 6), ("t", 1, 40)]) == {}
    # t[0] goes 7, 8 then 12: 9..11 were skipped; t[1] goes on normally
    assert w.holes([("t", 0, 7), ("t", 0, 8), ("t", 1, 41), ("t", 0, 12)]) == {("t", 0): 9}
    # after a seek back the records come again, lower than expected: no hole
    assert w.holes([("t", 0, 9), ("t", 0, 10), ("t", 0, 11), ("t", 0, 12)]) == {}
    assert w.holes([("t", 0, 13)]) == {}


def test_only_the_first_hole_of_a_partition_per_batch_and_reset_forgets() -> None:
    w = OffsetWatch()
    w.holes([("a", 0, 0)])
    assert w.holes([("a", 0, 3), ("a", 0, 9), ("b", 2, 100)]) == {("a", 0): 1}
    w.reset()  # a rebalance: the partition may come back far ahead
    assert w.holes([("a", 0, 500)]) == {}


def test_the_first_record_after_an_assignment_must_be_the_committed_one() -> None:
    w = OffsetWatch()
    committed = {("t", 0): 137, ("t", 1): 0}
    # t[0] starts at 141: 137..140 were skipped at the takeover; t[1] starts where committed
    got = w.holes([("t", 0, 141), ("t", 1, 0)], lambda tp: committed.get(tp))
    assert got == {("t", 0): 137}
    # a partition nobody committed yet: any start is fine
    assert w.holes([("u", 0, 50)], lambda tp: committed.get(tp)) == {}


@pytest.mark.integration
async def test_generation_starts_are_the_committed_offset_else_the_earliest(
    kafka_bootstrap: str, new_topic: NewTopicFactory,
) -> None:
    """On a real broker: committed 5 -> 5, committed 0 -> 0, nothing committed -> the
    partition's earliest offset (not None: the first record read must still be checked)."""
    topic = await new_topic("starts", partitions=3)
    group = f"g{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for p in range(3):
            for _ in range(8):
                await producer.send_and_wait(topic, b"x", partition=p)
    finally:
        await producer.stop()
    c = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                         enable_auto_commit=False)
    await c.start()
    try:
        c.assign([TopicPartition(topic, p) for p in range(3)])
        await c.commit({TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 0})
        asked: list[list[TopicPartition]] = []

        async def earliest(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            asked.append(tps)
            return dict(await c.beginning_offsets(tps))

        starts = await generation_starts(kafka_bootstrap, group,
                                         [(topic, 0), (topic, 1), (topic, 2)], earliest, {})
    finally:
        await c.stop()
    assert starts == {(topic, 0): 5, (topic, 1): 0, (topic, 2): 0}
    assert asked == [[TopicPartition(topic, 2)]]  # only where nothing was committed


@pytest.mark.integration
async def test_read_range_reads_one_partitions_records_from_start_to_end(
    kafka_bootstrap: str, new_topic: NewTopicFactory,
) -> None:
    topic = await new_topic("range", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for p in range(2):
            for i in range(10):
                await producer.send_and_wait(topic, b"%d" % i, partition=p)
    finally:
        await producer.stop()
    got = await read_range(kafka_bootstrap, (topic, 1), 3, 7, {})
    assert [(r.partition, r.offset, r.value) for r in got] == [
        (1, o, b"%d" % o) for o in range(3, 7)]
    assert await read_range(kafka_bootstrap, (topic, 0), 5, 5, {}) == []


class _Record:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value, self.timestamp, self.headers = None, b"r%d" % offset, 5000, ()


def _event(topic: str, partition: int, offset: int) -> Any:
    return app_mod._Refetched(app_mod._Message(topic, partition, offset, None, b"e", 1.0, ()))


async def test_skipped_records_are_read_from_the_broker_into_the_batch_in_offset_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust's seek back did not reliably bring skipped records again (see `_fill_holes`):
    they are read by a consumer of their own and processed with the batch, before it."""
    asked = []

    async def read(bootstrap: str, tp: tuple[str, int], start: int, end: int,
                   kwargs: Any) -> list[_Record]:
        asked.append((tp, start, end))
        return [_Record(*tp, o) for o in range(start, end) if o != 13]  # 13: not readable

    monkeypatch.setattr(app_mod, "read_range", read)
    fake = SimpleNamespace(bootstrap="b", settings=Settings())
    events = [_event("a", 0, 5), _event("b", 1, 20), _event("a", 0, 15), _event("a", 0, 16),
              _event("b", 1, 21)]
    batch, refetched, left = await app_mod.LeadflowApp._fill_holes(
        cast(Any, fake), events, {("a", 0): 10}, 100)
    assert asked == [(("a", 0), 10, 16)]
    assert [(ev.message.topic, ev.message.offset) for ev in batch] == [
        ("a", 5), ("a", 10), ("a", 11), ("a", 12), ("a", 14), ("a", 15), ("a", 16),
        ("b", 20), ("b", 21)]
    assert batch[1].message.value == b"r10" and batch[1].message.timestamp == 5.0
    assert refetched == {TP("a", 0): [10, 11, 12, 14]}
    assert left == {("a", 0): 13}  # Faust's consumer is sought back to what was not read
    # at most `most` records read; the rest is left to the seek
    asked.clear()
    _, refetched, left = await app_mod.LeadflowApp._fill_holes(
        cast(Any, fake), events, {("a", 0): 10}, 2)
    assert asked == [(("a", 0), 10, 12)] and refetched == {TP("a", 0): [10, 11]}
    assert left == {("a", 0): 12}


def test_refetched_offsets_count_as_acked_unless_a_rebalance_came_between() -> None:
    consumer = SimpleNamespace(
        _committed_offset=defaultdict(lambda: None), _acked=defaultdict(list),
        _acked_index=defaultdict(set), assignment=lambda: {TP("a", 0)})
    consumer._committed_offset[TP("a", 0)] = 11
    fake = SimpleNamespace(app=SimpleNamespace(consumer=consumer, consumer_generation_id=3))
    ack = app_mod.LeadflowApp._ack_refetched
    ack(cast(Any, fake), {TP("a", 0): [10, 11, 12], TP("c", 1): [4]}, 3)
    assert dict(consumer._acked) == {TP("a", 0): [11, 12]}  # below committed / unassigned: no
    ack(cast(Any, fake), {TP("a", 0): [14]}, 2)  # generation 2 ended during the batch
    assert dict(consumer._acked) == {TP("a", 0): [11, 12]}
