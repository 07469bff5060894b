"""CPU cost of producing a record: `AIOKafkaProducer.send` per record vs `send_batches`.

Sends rounds of 3,000 records of 900 bytes (about a lead's changelog record) over four
partitions, as one of the worker's batches does, with acks from all replicas, and prints
the process's CPU time per record for each way, twice each, alternating. Needs a broker:

    .venv/bin/leadflow kafka up
    .venv/bin/python benchmarks/send_bench.py [--bootstrap 127.0.0.1:9092] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer

from pipeline.kafka.topics import TopicSpec, ensure_topics
from pipeline.stream.produce import send_batches

RECORDS = 3000
PARTITIONS = 4
VALUE = b"x" * 900


async def per_record(producer: AIOKafkaProducer, topic: str) -> None:
    """The worker's way before `send_batches`: one send (and one future) per record."""
    futures = [await producer.send(topic, VALUE, key=b"k%d" % i, partition=i % PARTITIONS)
               for i in range(RECORDS)]
    await asyncio.gather(*futures)


async def batched(producer: AIOKafkaProducer, topic: str) -> None:
    """`send_batches`: one record batch per partition."""
    by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
    for i in range(RECORDS):
        by_tp.setdefault((topic, i % PARTITIONS), []).append((b"k%d" % i, VALUE))
    await send_batches(producer, by_tp)


async def main(bootstrap: str, rounds: int) -> None:
    topic = f"send-bench.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, 1, {})])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=512 * 1024)  # as the worker's
    await producer.start()
    try:
        for name, way in (("per record", per_record), ("send_batches", batched)) * 2:
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(rounds):
                await way(producer, topic)
            n = rounds * RECORDS
            print(f"{name:>13}: {(time.process_time() - cpu) / n * 1e6:5.2f} us CPU per "
                  f"record, {(time.perf_counter() - wall) / n * 1e6:5.2f} us wall")
    finally:
        await producer.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    asyncio.run(main(args.bootstrap, args.rounds))
