"""Which partition a key lives in: the same answer Kafka's default partitioner gives."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 17)
def partition_for(key: bytes, partitions: int) -> int:
    """murmur2, as the Java client, aiokafka and Faust's router use for keyed records.

    Envelopes are sent to an explicit partition; this keeps them on the partition that a
    keyed record (a decay tick, a lead API lookup, a table key) would take. Cached: the
    pure-Python hash costs more than the rest of a hop, and active keys repeat.
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
