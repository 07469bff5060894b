"""Every use of Faust's (and its aiokafka driver's) private internals, in one place.

Each function names what it works around. The rest of the package goes through these, so
a Faust upgrade that moves one of them breaks here only (`tests/stream/test_faust_adapter.py`
checks that no other module touches one).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterable, Iterator, Mapping
from typing import Any, cast

from faust.streams import _current_event
from faust.types import TP, EventT
from mode.utils.futures import notify

#: Event-loop turns with nothing new that end the gathering of a batch: Faust's fetcher
#: hands a fetched chunk to the stream queue one record per turn or two (`wait_first`
#: around each delivery), so an empty queue for one turn does not mean the chunk is in.
SETTLE_TURNS = 3


def kafka_producer(producer: Any) -> Any:
    """The started aiokafka producer under Faust's: record batches (`produce.send_batches`)
    and partition metadata have no public way through Faust's `Producer`."""
    return producer._ensure_producer()


def new_transactional_producer(producer: Any, transactional_id: str) -> Any:
    """An aiokafka producer built by Faust's driver with the app's settings and credentials,
    for one transactional id (Faust keeps its own manager's producers to itself)."""
    return producer._new_producer(transactional_id=transactional_id)


def aiokafka_consumer(thread: Any) -> Any:
    """The aiokafka consumer under Faust's consumer thread, to ask the broker directly."""
    return thread._ensure_consumer()


def _behind(stream: Any, events: list[EventT[Any]]) -> bool:
    """Whether the consumer knows of records of the batch's partitions beyond the batch's
    last: its high watermark, from the latest fetch, is more than one past it (one: a
    transaction's commit marker)."""
    last: dict[Any, int] = {}
    for event in events:
        last[event.message.tp] = event.message.offset
    consumer = stream.app.consumer
    for tp, offset in last.items():
        try:
            high = consumer.highwater(tp)
        except Exception:  # not assigned any more, or no consumer (tests)
            continue
        if high is not None and high > offset + 2:
            return True
    return False


def set_fetch_max_wait(consumer: Any, ms: int) -> None:
    """Bound how long a fetch waits at the broker for data. Faust's aiokafka driver builds
    its consumer with `fetch_max_wait_ms=1500` (not a setting), and aiokafka sends one fetch
    per broker at a time, leaving out the partitions that still hold buffered records: new
    records for those wait until a fetch for the others returns, up to that wait."""
    aiokafka_consumer(consumer._thread)._fetcher._fetch_max_wait_ms = ms


def take_queued(stream: Any, max_: int, within: float) -> AsyncIterator[list[EventT[Any]]]:
    """Batches of up to `max_` events: wait for the first, then take what is already queued.

    Faust's `Stream.take_events(max_, within)` waits `within` for every batch that does not
    fill, at every hop. Here a batch is cut as soon as the stream's queue stays empty for
    `SETTLE_TURNS` turns of the event loop (one event when idle), unless the consumer has
    seen more records of the batch's partitions than it delivered (`_behind`): then, a
    backlog, the batch fills for up to `within`, so live traffic does not pay a batch per
    few events when there is more to take.
    Built from the pieces of `take_events` (a buffering processor on the stream, the stream
    consumed passively, acks done here after the batch's body resumes the generator), and
    registered like it so that stopping the stream closes it.
    """
    agen = _take_queued(stream, max_, within)
    stream._active_agens.add(agen)
    return agen


async def _take_queued(
    stream: Any, max_: int, within: float
) -> AsyncGenerator[list[EventT[Any]], None]:
    events: list[EventT[Any]] = []
    ready = asyncio.Event()  # at least one event in the batch
    grew = asyncio.Event()  # an event was added
    consumed = asyncio.Event()  # a full batch was processed
    consuming: asyncio.Future[None] | None = None  # set while a batch is processed
    queue = stream.channel.queue
    loop = asyncio.get_running_loop()
    enable_acks = stream.enable_acks

    async def add(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:  # no event joins a batch being processed
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_queued found no current event")
        events.append(event)
        ready.set()
        grew.set()
        if len(events) >= max_:
            consumed.clear()
            await stream.wait(consumed)
        return value

    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if (await stream.wait(ready)).stopped:
                break
            idle, seen = 0, -1
            while len(events) < max_ and idle < SETTLE_TURNS and not stream.should_stop:
                if len(events) != seen or not queue.empty():
                    idle, seen = 0, len(events)
                else:
                    idle += 1
                await asyncio.sleep(0)
            if not events:
                continue
            # The consumer has seen more of these partitions than was delivered (records
            # fetched but not yet handed over, or still at the broker): a backlog, so fill
            # the batch for up to `within` rather than pay a batch for a few.
            deadline = loop.time() + within
            while (len(events) < max_ and not stream.should_stop
                   and _behind(stream, events) and (left := deadline - loop.time()) > 0):
                grew.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(grew.wait(), left)
            consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                batch = list(events)
                events.clear()
                for event in batch:
                    await stream.ack(event)
                notify(consuming)
                ready.clear()
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add)


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The offsets Faust's consumer has committed per partition: it keeps no public view."""
    return cast(Mapping[Any, "int | None"], consumer._committed_offset)


def count_as_acked(consumer: Any, tp: TP, offsets: Iterable[int]) -> None:
    """Mark records that never passed through Faust's consumer as acknowledged: it commits a
    partition only up to its first offset not acked."""
    committed = consumer._committed_offset[tp]
    index, acked = consumer._acked_index[tp], consumer._acked[tp]
    for offset in offsets:
        if (committed is None or offset >= committed) and offset not in index:
            index.add(offset)
            acked.append(offset)


async def _no_gap(tp: Any, offset_from: int, offset_to: int) -> None:
    """Stands in for Faust's `Consumer._add_gap` (see `never_commit_past_gaps`)."""


def never_commit_past_gaps(consumer: Any) -> None:
    """Faust counts an offset jump as done and commits past it (faust #606): with no
    transactions on the topics a jump is a skipped record, which must be read first."""
    consumer._add_gap = _no_gap


def hands_on(consumer: Any, tp: Any) -> bool:
    """Whether Faust's `Consumer.getmany` hands on fetched records of `tp` (its partition
    is active, or out of the fetch only because its stream buffer is full) or drops them;
    it keeps the sets to itself."""
    active = consumer._active_partitions
    return active is None or tp in active or tp in consumer._buffered_partitions


def changelog_topics(tables: Any) -> Collection[str]:
    """The changelog topic names of the app's tables (Faust's registry of them is private)."""
    return cast(Collection[str], tables._changelogs)


def raw_items(table: Any) -> Iterator[tuple[bytes, bytes]]:
    """A table's active keys and encoded values, lazily where the store allows it: Faust's
    own iteration decodes every value."""
    store = table.data
    if hasattr(store, "_iteritems"):  # RocksDB: iterators over the active partitions
        yield from store._iteritems()
    else:  # in memory (tests): a snapshot, as the agents may write meanwhile
        yield from list(store.data.items())


def partition_db(store: Any, partition: int) -> Any:
    """The RocksDB database of one partition of a store: reads and write batches straight
    through it cost less than Faust's `_get`/`_set` around each call."""
    return store._db_for_partition(partition)


def get_raw(store: Any, event: Any, key: bytes) -> bytes | None:
    """Read `key` from any store in the partition of `event`: Faust's stores take the
    partition from the current event, which exists only while iterating one at a time."""
    _current_event.set(weakref.ref(event))
    return cast("bytes | None", store._get(key))


def set_raw(store: Any, event: Any, key: bytes, value: bytes) -> None:
    """Write `key` to any store in the partition of `event` (see `get_raw`)."""
    _current_event.set(weakref.ref(event))
    store._set(key, value)
