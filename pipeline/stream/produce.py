"""Records sent through aiokafka's producer, those for known partitions as record batches.

`AIOKafkaProducer.send` makes a future and its metadata per message, which costs several
times the CPU per record of `create_batch`/`send_batch` (README; `benchmarks/send_bench.py`).
The worker sends about one changelog record per event, so this is paid on every event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple


class Send(NamedTuple):
    """One record to produce; `partition` None leaves it to the producer's partitioner."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None


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


async def send_records(producer: Any, sends: Iterable[Send]) -> list[Any]:
    """Send `sends` through a started `AIOKafkaProducer` and wait for every broker ack.

    Records for a given partition (changelogs, envelopes) go as record batches
    (`send_batches`), the rest (keyed for the producer's partitioner) one by one; all are
    queued before any ack is awaited, so they share the producer's requests. Returns what
    was acknowledged: an `Acked` per batch, a `RecordMetadata` per single record.
    """
    by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
    singles = []
    for topic, key, value, partition in sends:
        if partition is None:
            singles.append(await producer.send(topic, value, key=key))
        else:
            by_tp.setdefault((topic, partition), []).append((key, value))
    acked: list[Any] = await send_batches(producer, by_tp) if by_tp else []
    return acked + list(await asyncio.gather(*singles))
