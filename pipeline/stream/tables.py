"""One batch's view of a Faust table (reads through its store, writes coalesced), and a
changelog fetch written to a store in one batch (`write_fetch`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from faust.types import TP, EventT
from rocksdict import WriteBatch

from pipeline.stream import faust_adapter, transactions
from pipeline.stream.cache import RecordCache
from pipeline.stream.codec import dumps
from pipeline.stream.produce import Send
from pipeline.stream.stages.records import LeadRecord

Event = EventT[Any]


@dataclass(frozen=True, slots=True)
class TableCodec:
    """How a table's values are stored: JSON by default; a table of typed records names
    its own (the stages then read and write the records themselves)."""

    decode: Callable[[bytes], Any] = orjson.loads
    encode: Callable[[Any], bytes] = dumps
    #: A written value as `decode` would give it back from the store: what a cache keeps.
    stored: Callable[[Any], Any] = lambda value: value  # JSON values come back equal


JSON = TableCodec()
#: The leads table holds typed records, decoded by the table (and kept, `stream.cache`).
LEAD_CODEC = TableCodec(decode=LeadRecord.decode, encode=LeadRecord.encode,
                        stored=LeadRecord.as_stored)


class BatchTable:
    """One batch's view of a Faust table: reads through its store, writes coalesced.

    Faust's stores (RocksDB in particular) take the partition of a read or write from the
    current event, which exists only while iterating a stream one event at a time. In a
    batch each key uses the partition of the record it arrived in: every record of the topics
    that feed a table is on its keys' partition (keyed, or an envelope sent to
    `partition_for` its keys). Writes bypass ``table[key] = value``, whose changelog
    records Faust would send one by one through its buffer: `stage` turns a batch's
    writes into changelog sends that go out with the batch's outputs, and `apply` writes
    the store and the changelog offsets once the broker has acknowledged them all.
    """

    def __init__(self, table: Any, by_key: dict[bytes, Event], codec: TableCodec = JSON,
                 cache: RecordCache | None = None) -> None:
        self.table = table
        self.by_key = by_key
        self.codec = codec
        #: Decoded values kept across batches (`stream.cache`), and the generation of it
        #: this batch began in.
        self.cache = cache
        self._generation = cache.generation if cache is not None else 0
        self.changelog = cast(str, table.changelog_topic.get_topic_name())
        #: key, encoded value, the record it arrived in, the value as the stage wrote it
        self._staged: list[tuple[bytes, bytes, Event, Any]] = []
        # RocksDB (rocksdict) is read and written straight through the partition's database:
        # Faust's `_get`/`_set` around each call cost more than the read or write. Any other
        # store goes through Faust, which takes the partition from the current event.
        self._direct = bool(getattr(table.data, "use_rocksdict", False))

    def _event(self, key: bytes) -> Event:
        """The record `key` arrived in (its partition is the key's)."""
        ev = self.by_key.get(key)
        if ev is None:
            raise KeyError(f"table key {key!r} is not the key of any message in the batch")
        return ev

    def get(self, key: str) -> Any:
        """Read a key of this batch (str key, as the stages use)."""
        k = key.encode()
        ev = self._event(k)
        if self.cache is not None:
            return self.cache.read(k, self._generation, lambda: self._load(k, ev),
                                   self.codec.decode)
        raw = self._load(k, ev)
        return None if raw is None else self.codec.decode(raw)

    def _load(self, k: bytes, ev: Event) -> bytes | None:
        # The store's raw bytes, decoded by the caller: `table.get` asks the store twice
        # (contains, then get) and decodes through Faust's serializer registry.
        store = self.table.data
        if self._direct:
            return cast("bytes | None",
                        faust_adapter.partition_db(store, ev.message.partition).get(k))
        return faust_adapter.get_raw(store, ev, k)

    def stage(self, writes: Mapping[str, Any]) -> list[Send]:
        """Changelog records for `writes` (one per key), to send with the batch's outputs."""
        sends: list[Send] = []
        encode = self.codec.encode
        for key, value in writes.items():
            k = key.encode()
            ev = self._event(k)
            v = encode(value)
            self._staged.append((k, v, ev, value))
            sends.append(Send(self.changelog, k, v, ev.message.partition))
        return sends

    def apply(self, acked: Sequence[Any]) -> None:
        """Write the staged values to the store, and remember the changelog offsets.

        The offsets are what Faust's own changelog callback keeps: on recovery the store
        reads its changelog only past them. Under exactly-once both wait for the batch's
        transaction to commit (see `stream.transactions`).
        """
        txn = transactions.current()
        if txn is not None:
            # Persisted: the commit marker that follows our records (`transactions.MARKER`),
            # else every restart waits in Faust's recovery for a record that never comes.
            txn.after_commit(lambda: self._write(acked, past=transactions.MARKER))
        else:
            self._write(acked)

    def _write(self, acked: Sequence[Any], past: int = 0) -> None:
        try:
            self._write_store()
        except BaseException:
            if self.cache is not None:  # some keys may be written, some not
                self.cache.discard(k for k, _, _, _ in self._staged)
            raise
        if self.cache is not None:
            cache, generation, stored = self.cache, self._generation, self.codec.stored
            for k, v, _, value in self._staged:
                cache.put(k, stored(value), len(v), generation)
        self._staged.clear()
        last: dict[int, int] = {}
        for meta in acked:
            if meta.topic == self.changelog:
                last[meta.partition] = max(meta.offset, last.get(meta.partition, -1))
        store = self.table.data
        for partition, offset in last.items():
            store.set_persisted_offset(TP(self.changelog, partition), offset + past)

    def _write_store(self) -> None:
        store = self.table.data
        if self._direct:
            # One write batch per partition database (Faust's changelog recovery writes the
            # same way), not a call per key.
            batches: dict[int, Any] = {}
            for k, v, ev, _ in self._staged:
                wb = batches.get(ev.message.partition)
                if wb is None:
                    wb = batches[ev.message.partition] = WriteBatch(raw_mode=True)
                wb.put(k, v)
            for partition, wb in batches.items():
                faust_adapter.partition_db(store, partition).write(wb)
        else:
            for k, v, ev, _ in self._staged:
                faust_adapter.set_raw(store, ev, k, v)


def write_fetch(store: Any, partition: int, records: Iterable[Any], position: int) -> None:
    """One write batch: a fetch's records (tombstones delete) and the persisted offset, the
    consumer's `position` - 1 (so the store and its offset always change together)."""
    wb = WriteBatch(raw_mode=True)
    for r in records:
        if r.value is None:
            wb.delete(r.key)
        else:
            wb.put(r.key, r.value)
    wb.put(store.offset_key, str(position - 1).encode())
    # Through the adapter (Faust's stores have no public per-partition handle); this
    # also opens a standby partition's database.
    faust_adapter.partition_db(store, partition).write(wb)
