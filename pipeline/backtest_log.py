"""Backtest input from the retained input topics: every record since a time, up to the end.

`leadflow backtest --from-kafka --since 30d` runs the rules over what really arrived rather
than an export. Each record is parsed as the worker's ingest parses it (its source from the
topic, the record timestamp standing in for a missing event time and bounding clock skew);
records that cannot be used are counted with their topic, partition and offset, never
stopping the run. Reading is bounded: the end offsets are taken when reading starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer

from pipeline.backtest import BadLine, Loaded, stitch
from pipeline.errors import InvalidEvent, LeadflowError
from pipeline.kafka.security import KafkaSecurity
from pipeline.models.events import parse_message
from pipeline.models.timefmt import iso_z


class LogReadError(LeadflowError):
    """The input topics could not be read as asked."""


async def _check_retained(consumer: AIOKafkaConsumer, tps: list[Any], since_ms: int) -> None:
    """LogReadError when records at or after `since_ms` are gone from a partition: it keeps
    records only from a later time (retention or deleted records), so the backtest would
    silently start later than asked."""
    starts = await consumer.beginning_offsets(tps)
    trimmed = [tp for tp in tps if starts[tp] > 0]
    if not trimmed:
        return
    first = await consumer.offsets_for_times({tp: 0 for tp in trimmed})
    gone = sorted((found.timestamp, tp.topic, tp.partition) for tp in trimmed
                  if (found := first.get(tp)) is not None and found.timestamp > since_ms)
    if gone:
        ts, topic, partition = gone[-1]
        raise LogReadError(
            f"--since {iso_z(since_ms)} reaches before what {topic}[{partition}] still "
            f"holds: its oldest record is from {iso_z(ts)} (older ones are past the topic's "
            f"retention); ask for --since {iso_z(ts)} or later"
            + (f" ({len(gone)} partitions are trimmed so)" if len(gone) > 1 else ""))


async def read_inputs(
    bootstrap: str, topics: Mapping[str, str], since_ms: int, *,
    security: KafkaSecurity | None = None, max_bytes: int = 64 * 1024,
    max_future_skew_ms: int = 300_000, timeout_s: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
) -> Loaded:
    """Events of `topics` (topic -> source) with a record timestamp at or after `since_ms`.

    `progress(read, total)` is called as records come in (total: records in the range).
    """
    from pipeline.alerts import topic_partitions

    tps, missing = await topic_partitions(bootstrap, list(topics), security=security)
    if missing:
        raise LogReadError(f"input topics missing: {', '.join(missing)} (check the "
                           "LEADFLOW_TOPIC_* settings, or run `leadflow topics create`)")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", **(security.client_kwargs() if security else {}))
    await consumer.start()
    out = Loaded()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await _check_retained(consumer, tps, since_ms)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        starts = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp])
                  for tp in tps}
        todo = {tp for tp in tps if starts[tp] < ends[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        total = sum(ends[tp] - starts[tp] for tp in todo)
        read = 0
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise LogReadError(f"reading the input topics took longer than "
                                   f"{timeout_s:.0f} s ({read} of {total} records read)")
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for tp, records in batch.items():
                source = topics[tp.topic]
                for r in records:
                    # the start offset is the first record at or after `since_ms`; a later
                    # record may still carry an older timestamp (a producer's own time)
                    if r.offset >= ends[tp] or r.timestamp < since_ms:
                        continue
                    read += 1
                    out.lines = read
                    where = f"{tp.topic}[{tp.partition}]@{r.offset}"
                    try:
                        out.events.append(parse_message(
                            r.value or b"", source=source, now_ms=r.timestamp,
                            max_bytes=max_bytes, max_future_skew_ms=max_future_skew_ms))
                    except InvalidEvent as exc:
                        out.bad.append(BadLine(read, exc.reason, exc.detail, where))
                    except Exception as exc:  # a backtest reports bad input, never stops
                        out.bad.append(BadLine(read, "internal",
                                               f"{type(exc).__name__}: {exc}", where))
            for tp in list(todo):  # done at the end offset (or a transaction marker before it)
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
            if progress is not None:
                progress(read, total)
    finally:
        await consumer.stop()
    out.events = stitch(out.events)
    return out
