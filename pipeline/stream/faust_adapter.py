"""Every use of Faust's (and its aiokafka driver's) private internals, in one place.

Each function names what it works around. The rest of the package goes through these, so
a Faust upgrade that moves one of them breaks here only (`tests/stream/test_faust_adapter.py`
checks that no other module touches one).
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, cast

from faust.streams import _current_event
from faust.types import TP


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
