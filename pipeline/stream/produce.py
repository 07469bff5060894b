"""Records for known partitions sent as record batches of aiokafka's producer.

`AIOKafkaProducer.send` costs about 9.5 us of CPU per record (a future and its metadata
per message); `create_batch`/`send_batch` cost about 2.4 us per record in a batch
(`benchmarks/send_bench.py`). The worker sends about one changelog record per event, so
this is paid on every event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Acked:
    """The broker's acknowledgement of a batch: its partition and its last record's offset."""

    topic: str
    partition: int
    offset: int


async def send_batches(
    producer: Any, by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes]]]
) -> list[Acked]:
    """Send each partition's (key, value) records in order as record batches; wait for all.

    `producer` is a started `AIOKafkaProducer`. A partition's records fill as few batches as
    its `max_batch_size` allows; one `Acked` comes back per batch sent.
    """
    waiting: list[tuple[Any, str, int, int]] = []  # future, topic, partition, records
    for (topic, partition), records in by_tp.items():
        batch, n = producer.create_batch(), 0
        for key, value in records:
            if batch.append(timestamp=None, key=key, value=value) is None:  # full
                waiting.append((await producer.send_batch(batch, topic, partition=partition),
                                topic, partition, n))
                batch, n = producer.create_batch(), 0
                # An empty batch takes any one record, however large (as `send` does).
                batch.append(timestamp=None, key=key, value=value)
            n += 1
        if n:
            waiting.append((await producer.send_batch(batch, topic, partition=partition),
                            topic, partition, n))
    metas = await asyncio.gather(*(fut for fut, *_ in waiting))
    return [Acked(topic, partition, meta.offset + n - 1)
            for meta, (_, topic, partition, n) in zip(metas, waiting, strict=True)]
