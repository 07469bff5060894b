"""Decoded table values kept between batches: read through the store, written through it.

A lead touched again in a later batch is then neither read from RocksDB nor decoded and
rebuilt (its read costs about twice its write). The cache only ever holds what the store
holds: a value enters it when it is read from the store, or after the batch's store write
(under exactly-once: after the transaction committed), so an aborted or dead-lettered
batch leaves nothing behind. It is bounded by an estimate of the decoded values' memory
(least recently used first out), and emptied at every rebalance: a partition that comes
back may have been changed by another worker meanwhile. A batch that began before the
rebalance adds nothing to it afterwards (`generation`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

#: Memory of a decoded lead record per byte of its encoded form (measured over the bench
#: traffic's records with tracemalloc: about 4.1), plus what one entry itself takes.
DECODED_PER_BYTE: Final = 4
ENTRY_OVERHEAD: Final = 200


class _Miss:
    __slots__ = ()


MISS: Final = _Miss()


class RecordCache:
    """Key -> decoded value of one table, for the partitions this worker owns."""

    __slots__ = ("_entries", "_max", "_size", "generation", "hits", "misses")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a record cache of {max_bytes} bytes")
        self._max = max_bytes
        # key -> (decoded value, estimated bytes), least recently used first
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._size = 0
        #: Bumped whenever the cache is emptied: a batch keeps the generation it began in
        #: and `put` ignores a value from an older one.
        self.generation = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Estimated bytes of the values held."""
        return self._size

    def get(self, key: bytes) -> Any:
        """The value of `key`, or `MISS`."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return MISS
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: bytes, value: Any, encoded_len: int, generation: int) -> None:
        """Keep `value` (the store's value of `key`, `encoded_len` bytes encoded), unless
        the cache was emptied since `generation`."""
        if generation != self.generation or not self._max:
            return
        cost = encoded_len * DECODED_PER_BYTE + ENTRY_OVERHEAD
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= old[1]
        if cost > self._max:
            return
        self._entries[key] = (value, cost)
        self._size += cost
        entries = self._entries
        while self._size > self._max:
            _, (_, c) = entries.popitem(last=False)
            self._size -= c

    def discard(self, keys: Iterable[bytes]) -> None:
        """Forget `keys` (their store values are not known for certain)."""
        for key in keys:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= old[1]

    def clear(self) -> None:
        """Forget everything, and every value a running batch would still add."""
        self._entries.clear()
        self._size = 0
        self.generation += 1

    def read(self, key: bytes, generation: int, load: Callable[[], bytes | None],
             decode: Callable[[bytes], Any]) -> Any:
        """The decoded value of `key`: from the cache, else `load`ed from the store and
        decoded (and kept). None when the store has none."""
        value = self.get(key)
        if value is not MISS:
            return value
        raw = load()
        if raw is None:
            return None
        value = decode(raw)
        self.put(key, value, len(raw), generation)
        return value
