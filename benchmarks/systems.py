"""The `limit` and `naive_faust` systems of the end-to-end benchmark, one per process.

    python benchmarks/systems.py limit|naive_faust --bootstrap H:P --group G \
        --topics t1,t2,... --out latencies.json [--datadir DIR] [--commit-interval S]

Each consumes the input topics from the start under consumer group G and commits its
offsets (the parent sees the end of the throughput phase in them): limit per fetched batch,
naive_faust every --commit-interval seconds instead of Faust's 2.8 s default. Each records,
per message, the producer timestamp and the latency from it to "done" (limit: decoded;
naive_faust: the table written). On SIGTERM it stops and writes
``{"ts": [...], "lat_ms": [...]}`` to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import signal
import time
from array import array
from pathlib import Path

import orjson

TS: array[float] = array("d")
LAT: array[float] = array("d")


def _dump(path: str) -> None:
    Path(path).write_bytes(orjson.dumps({"ts": TS.tolist(), "lat_ms": LAT.tolist()}))


async def limit(args: argparse.Namespace) -> None:
    """A bare aiokafka consumer: read, decode with orjson, commit per fetched batch."""
    from aiokafka import AIOKafkaConsumer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        *args.topics.split(","), bootstrap_servers=args.bootstrap, group_id=args.group,
        auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000,
    )
    await consumer.start()
    loads = orjson.loads
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            if not batches:
                continue
            for msgs in batches.values():
                for m in msgs:
                    loads(m.value)
                    now = time.time() * 1000
                    TS.append(m.timestamp)
                    LAT.append(now - m.timestamp)
            await consumer.commit()
    finally:
        await consumer.stop()
        _dump(args.out)


def naive_faust(args: argparse.Namespace) -> None:
    """A Faust agent that iterates events one by one and writes a per-lead counter table."""
    import faust

    app = faust.App(
        args.group, broker=f"kafka://{args.bootstrap}", store="rocksdb://",
        datadir=args.datadir, topic_partitions=args.partitions, web_enabled=False,
        consumer_auto_offset_reset="earliest", broker_max_poll_records=500,
        broker_commit_interval=args.commit_interval,
        logging_config=None,
    )
    topic = app.topic(*args.topics.split(","), key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, key_type=bytes, partitions=args.partitions)

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for ev in stream.events():
            orjson.loads(ev.value)
            counts[ev.key] += 1
            ts = ev.message.timestamp * 1000
            TS.append(ts)
            LAT.append(time.time() * 1000 - ts)

    atexit.register(_dump, args.out)
    worker = faust.Worker(app, loglevel="warning", redirect_stdouts=False)
    worker.execute_from_commandline()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=["limit", "naive_faust"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topics", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--datadir", default=".leadflow/bench/faust")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--commit-interval", type=float, default=0.2,
                    help="naive_faust: seconds between offset commits")
    args = ap.parse_args()
    if args.system == "limit":
        asyncio.run(limit(args))
    else:
        naive_faust(args)


if __name__ == "__main__":
    main()
