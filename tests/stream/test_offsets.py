"""OffsetWatch: a skipped record is noticed, re-reads and other partitions are not holes;
generation_starts: where reading must begin after an assignment (on a real broker)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.stream.offsets import OffsetWatch, generation_starts
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
