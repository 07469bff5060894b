"""send_batches on a real broker: every record lands, in order, and the offsets it reports
are those of each batch's last record."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.stream.produce import Acked, send_batches, send_records
from tests.conftest import NewTopic as NewTopicFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_records_split_into_batches_land_in_order_with_their_last_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory,
) -> None:
    topic = await new_topic("produce", partitions=2)
    # Small batches, so a partition's 40 records of 300 bytes need several.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all",
                                max_batch_size=2048)
    await producer.start()
    try:
        records = {p: [(f"k{p}-{i}".encode(), bytes([65 + i % 26]) * 300) for i in range(40)]
                   for p in (0, 1)}
        first = await send_batches(producer, {(topic, p): r for p, r in records.items()})
        # A second call continues each partition where the first ended.
        second = await send_batches(producer, {(topic, 1): [(None, b"last")]})
    finally:
        await producer.stop()

    assert all(isinstance(a, Acked) and a.topic == topic for a in first)
    for p in (0, 1):
        offsets = [a.offset for a in first if a.partition == p]
        assert len(offsets) > 1, "the records should have needed more than one batch"
        assert offsets == sorted(offsets) and offsets[-1] == 39
    assert second == [Acked(topic, 1, 40)]

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        got: dict[int, list[tuple[bytes | None, bytes | None, int]]] = {0: [], 1: []}
        deadline = time.monotonic() + 60
        while len(got[0]) < 40 or len(got[1]) < 41:
            assert time.monotonic() < deadline, f"records missing after 60 s: {got}"
            for tp, recs in (await consumer.getmany(timeout_ms=5000)).items():
                got[tp.partition] += [(r.key, r.value, r.offset) for r in recs]
    finally:
        await consumer.stop()
    assert got[0] == [(k, v, i) for i, (k, v) in enumerate(records[0])]
    assert got[1] == [*((k, v, i) for i, (k, v) in enumerate(records[1])), (None, b"last", 40)]


async def test_send_records_batches_records_with_a_partition_and_sends_the_rest_singly(
    kafka_bootstrap: str, new_topic: NewTopicFactory,
) -> None:
    batched, keyed = await new_topic("produce", partitions=2), await new_topic("produce")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        acks = await send_records(producer, [
            (batched, b"a", b"1", 1), (keyed, b"lead-1", b"out", None), (batched, b"b", b"2", 1),
        ])
    finally:
        await producer.stop()
    # One ack for partition 1's batch of two (its last offset), one for the single record.
    assert acks[0] == Acked(batched, 1, 1)
    assert (acks[1].topic, acks[1].partition, acks[1].offset) == (keyed, 0, 0)
    assert len(acks) == 2
