"""The input topics, read by a plain aiokafka consumer in batches.

Ingest keeps no state: it validates and forwards each message to the identity topic. It
does not need Faust's co-partitioning or tables, and Faust's per-message path (fetcher,
conductor, stream, per-message acks) cost more per event than everything else the worker
does. So the inputs are read with ``getmany`` in their own consumer group
(``<app_id>-ingest``), and a batch's offsets are committed only after everything it
produced has been acknowledged by the brokers: at least once, like the Faust agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from pipeline.stream.stages.records import RawMessage

log = logging.getLogger(__name__)

Handle = Callable[[list[RawMessage]], Awaitable[None]]
#: What to do with a batch that failed for a reason other than the brokers.
OnFailure = Callable[[list[RawMessage], BaseException], Awaitable[None]]

#: Wait before a batch that failed on a broker error is read and tried again.
RETRY_BACKOFF_S = 1.0


def raw_message(r: ConsumerRecord[bytes, bytes]) -> RawMessage:
    """A consumer record as the pure ingest step takes it."""
    return RawMessage(
        topic=r.topic, partition=r.partition, offset=r.offset,
        timestamp_ms=r.timestamp, key=r.key, value=r.value,
        headers=tuple((k, bytes(v)) for k, v in r.headers or ()),
    )


class InputConsumer:
    """Read `topics` in batches, hand each batch to `handle`, commit after it returns."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        handle: Handle,
        on_failure: OnFailure,
        batch_max: int,
        within_s: float,
        fetch_max_wait_ms: int = 500,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.topics = list(topics)
        self.handle = handle
        self.on_failure = on_failure
        self.batch_max = batch_max
        self.within_ms = max(1, int(within_s * 1000))
        self.consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_max,
            # aiokafka fetches the partitions holding no buffered records, one fetch at a
            # time: this bounds how long the others' new records wait behind that fetch.
            fetch_max_wait_ms=fetch_max_wait_ms,
            **(client_kwargs or {}),
        )
        #: Offsets committed by this consumer (next offset to read), for the lag metric.
        self.committed: dict[TopicPartition, int] = {}

    async def offsets(self) -> list[tuple[TopicPartition, int, int]]:
        """(partition, high watermark, committed offset) for each input partition read here."""
        out = []
        for tp in list(self.consumer.assignment()):
            if tp not in self.committed:  # not committed by this process yet: ask the group
                with contextlib.suppress(KafkaError):
                    done = await self.consumer.committed(tp)
                    if done is not None:
                        self.committed[tp] = int(done)
            # The await above lets a rebalance take the partition away (aiokafka then
            # asserts in highwater): report only what is still ours.
            if tp not in self.consumer.assignment():
                continue
            high = self.consumer.highwater(tp)
            if high is not None and tp in self.committed:
                out.append((tp, int(high), self.committed[tp]))
        return out

    async def run(self) -> None:
        """Consume until cancelled; the consumer leaves its group on the way out."""
        await self.consumer.start()
        try:
            while True:
                batch = await self.consumer.getmany(
                    timeout_ms=self.within_ms, max_records=self.batch_max
                )
                if batch:
                    await self._process(batch)
        finally:
            with contextlib.suppress(Exception):
                await self.consumer.stop()

    async def _process(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        msgs = [raw_message(r) for recs in batch.values() for r in recs]
        try:
            await self.handle(msgs)
        except asyncio.CancelledError:
            raise
        except KafkaError as exc:
            # The brokers, not the batch: read it again after a pause (nothing committed).
            log.warning("input batch of %d not forwarded (%s); retrying", len(msgs), exc)
            await asyncio.sleep(RETRY_BACKOFF_S)
            for tp, recs in batch.items():
                if tp in self.consumer.assignment():  # aiokafka raises for any other
                    self.consumer.seek(tp, recs[0].offset)
            return
        except Exception as exc:
            log.exception("input batch of %d failed; dead-lettering it", len(msgs))
            await self.on_failure(msgs, exc)
        # A rebalance during the batch may have given some of its partitions to another
        # worker, which reads them again from the last commit (repeats are dropped by
        # messageId downstream). aiokafka refuses a commit naming any partition no longer
        # assigned (IllegalStateError, which would end the worker): commit only ours.
        assigned = self.consumer.assignment()
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on meanwhile (a rebalance in progress or completed).
            log.warning("input offsets not committed after a rebalance: %s", exc)
            return
        self.committed.update(offsets)
