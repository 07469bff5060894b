"""InputConsumer on a real broker: a rebalance during a batch must not stop the worker.

Seen in the 3-worker cluster test: a survivor's input batch was still being forwarded when
the ingest group rebalanced and gave one of its partitions to another worker; the commit
after the batch then raised aiokafka's IllegalStateError ("Partition ... is not assigned"),
which ended the app task and so the whole worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.stream.inputs import InputConsumer
from pipeline.stream.stages.records import RawMessage
from tests.conftest import NewTopic as NewTopicFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_partition_taken_during_a_batch_is_left_uncommitted_and_the_rest_committed(
    kafka_bootstrap: str, new_topic: NewTopicFactory,
) -> None:
    topic = await new_topic("inputs", partitions=2)
    group = f"g{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for p in (0, 1):
            for i in range(3):
                await producer.send_and_wait(topic, f"{p}-{i}".encode(), partition=p)
    finally:
        await producer.stop()

    in_batch = asyncio.Event()
    release = asyncio.Event()
    batches: list[list[RawMessage]] = []

    async def handle(msgs: list[RawMessage]) -> None:
        batches.append(msgs)
        if len(batches) == 1:
            in_batch.set()
            await release.wait()  # held until the other member owns one partition

    async def on_failure(msgs: list[RawMessage], exc: BaseException) -> None:
        raise AssertionError(f"batch dead-lettered: {exc!r}")

    ours = InputConsumer(bootstrap=kafka_bootstrap, topics=[topic], group_id=group,
                         handle=handle, on_failure=on_failure, batch_max=100, within_s=0.05)
    running = asyncio.create_task(ours.run())
    other = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await asyncio.wait_for(in_batch.wait(), 30)
        assert {r.partition for r in batches[0]} == {0, 1}, "first batch must span both"
        await other.start()
        async with asyncio.timeout(60):
            while len(ours.consumer.assignment()) != 1 or not other.assignment():
                await asyncio.sleep(0.2)
        kept = next(iter(ours.consumer.assignment()))
        release.set()
        async with asyncio.timeout(30):
            while kept not in ours.committed:
                assert not running.done(), f"input consumer stopped: {running.exception()!r}"
                await asyncio.sleep(0.2)
        assert not running.done(), f"input consumer stopped: {running.exception()!r}"
        # The partition it kept is committed past the batch; the one it lost is left to
        # its new owner, who reads it from the last commit (none here: from the start).
        lost = TopicPartition(topic, 1 - kept.partition)
        assert ours.committed[kept] == 3
        assert lost not in ours.committed
        assert await other.committed(lost) is None
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await other.stop()
