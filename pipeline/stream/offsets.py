"""Noticing records a consumer skipped: the offsets of a partition must not jump."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class OffsetWatch:
    """The next offset expected per partition, from the records seen in order.

    Faust's consumer can drop records it already fetched and then count the jump as done
    (faust #606): those records would never be processed. One way, seen in the cluster
    test: after a rebalance its recovery resumes the stream partitions while the fetcher
    runs, awaits the seek to the committed offsets, then resumes flow, which clears the
    stream queues; what was fetched meanwhile is gone, and where nothing (or 0) was
    committed there is no seek to fetch it again. On topics written
    without transactions and not compacted, a jump within one assignment is never
    legitimate, so the caller reads the skipped records again from the offset this returns.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}

    def holes(
        self,
        records: Iterable[tuple[str, int, int]],
        committed: Callable[[tuple[str, int]], int | None] = lambda tp: None,
    ) -> dict[tuple[str, int], int]:
        """(topic, partition, offset) in delivery order -> {(topic, partition): first skipped}.

        `committed` gives the group's committed offset of a partition not seen yet (after
        an assignment): its first record must be that one, or records were skipped at the
        very start of the takeover.
        """
        found: dict[tuple[str, int], int] = {}
        expect = self._next
        for topic, partition, offset in records:
            tp = (topic, partition)
            want = expect.get(tp)
            if want is None:
                want = committed(tp)
            if want is not None and offset > want and tp not in found:
                found[tp] = want
            # Lower than expected: records read again (after a seek); follow them.
            expect[tp] = offset + 1
        return found

    def reset(self) -> None:
        """Forget every position: after a rebalance a partition may come back far ahead."""
        self._next.clear()


async def generation_starts(
    bootstrap: str,
    group_id: str,
    partitions: Iterable[tuple[str, int]],
    earliest: Callable[[list[TopicPartition]], Awaitable[Mapping[TopicPartition, int]]],
    client_kwargs: Mapping[str, Any],
) -> dict[tuple[str, int], int]:
    """Where reading each of `partitions` must begin after an assignment, from the broker.

    The group's committed offset, else (nothing committed) the partition's earliest
    offset. Asked before any record of the new assignment is read: Faust's own view is no
    substitute, as it keeps no committed offset 0 or none at all, and on such a partition
    it never seeks, so records it drops right after a rebalance (its stream queues are
    cleared when flow resumes after recovery) leave no trace there.
    """
    wanted = [TopicPartition(t, p) for t, p in partitions]
    if not wanted:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    try:
        done = await admin.list_consumer_group_offsets(group_id, partitions=wanted)
    finally:
        await admin.close()
    starts = {(tp.topic, tp.partition): int(m.offset) for tp, m in done.items() if m.offset >= 0}
    fresh = [tp for tp in wanted if (tp.topic, tp.partition) not in starts]
    if fresh:
        for tp, offset in (await earliest(fresh)).items():
            starts[(tp.topic, tp.partition)] = int(offset)
    return starts


async def read_range(
    bootstrap: str,
    tp: tuple[str, int],
    start: int,
    end: int,
    client_kwargs: Mapping[str, Any],
    *,
    timeout_s: float = 30.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of one partition from offset `start` up to (not including) `end`.

    Read by a consumer of its own (no group, nothing committed): what Faust's consumer
    skipped is read here and processed before the batch that showed the jump, rather than
    by seeking Faust's consumer back (see `OffsetWatch`). Stops at `end` or after
    `timeout_s`, with what it has read by then.
    """
    topic, partition = tp
    atp = TopicPartition(topic, partition)
    out: list[ConsumerRecord[bytes, bytes]] = []
    if start >= end:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, **client_kwargs)
    await consumer.start()
    try:
        consumer.assign([atp])
        consumer.seek(atp, start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            got = await consumer.getmany(atp, timeout_ms=500)
            out.extend(r for r in got.get(atp, ()) if start <= r.offset < end)
            if await consumer.position(atp) >= end:
                break
    finally:
        await consumer.stop()
    return out
