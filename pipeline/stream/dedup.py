"""A lead's long dedup window: the messageIds it has scored, compact, in buckets of event time.

The lead record is read and written whole once per batch that has events of the lead, so
its size is paid again and again: kept as {messageId: event ms}, the window of a very active
lead was 150 KB of JSON (2.2 KB written per event on average in `benchmarks/steps_bench.py`)
and its decode, copy and trim were most of the score step's time. Here each id is a 64-bit
BLAKE2b digest in 16 hex characters, and the digests are concatenated into one string per
bucket of event time (key: the bucket's start in ms), so the record holds a few plain
strings, a membership test is a substring search, and expiry drops whole buckets.

A digest can collide: the chance that a new id is taken for a seen one is n / 2**64 for n
ids in the window (under 3e-16 at the cap of 5,000). Records written before this format
({messageId: event ms}) are read and converted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

#: Hex characters per digest (8 bytes).
WIDTH = 16
#: Buckets per retention window: expiry is exact to one bucket, on the side of keeping more.
BUCKETS_PER_WINDOW = 8


def digest(message_id: str) -> str:
    """The 16-hex-character digest a messageId is kept as."""
    return hashlib.blake2b(message_id.encode(), digest_size=8).hexdigest()


def _holds(digests: str, d: str) -> bool:
    """Whether `d` is one of the WIDTH-aligned digests in `digests`."""
    i = digests.find(d)
    while i != -1:
        if i % WIDTH == 0:
            return True
        i = digests.find(d, i + 1)
    return False


def count(stored: Mapping[str, Any] | None) -> int:
    """How many ids a stored window holds (either format)."""
    if not stored:
        return 0
    return sum(len(v) // WIDTH if isinstance(v, str) else 1 for v in stored.values())


class SeenWindow:
    """One lead's window for the length of a batch: test-and-add, then trim and store."""

    __slots__ = ("_bucket_ms", "_buckets", "_new", "_retention_ms")

    def __init__(self, stored: Mapping[str, Any] | None, *, retention_ms: int) -> None:
        self._retention_ms = retention_ms
        self._bucket_ms = max(1, retention_ms // BUCKETS_PER_WINDOW)
        self._buckets: dict[str, str] = {}
        #: Digests added in this batch -> their bucket key; joined into `_buckets` on store.
        self._new: dict[str, str] = {}
        if stored:
            # One format per record: it is written whole by one version.
            if isinstance(next(iter(stored.values())), str):
                self._buckets = dict(stored)
            else:  # the former {messageId: event ms} form
                for key, value in stored.items():
                    self._new[digest(str(key))] = self._key(int(value))

    def _key(self, ts_ms: int) -> str:
        return str(ts_ms - ts_ms % self._bucket_ms)

    def add(self, message_id: str, ts_ms: int) -> bool:
        """Record an id; False if it was already in the window (a duplicate)."""
        d = digest(message_id)
        if d in self._new:
            return False
        for digests in self._buckets.values():
            if _holds(digests, d):
                return False
        self._new[d] = self._key(ts_ms)
        return True

    def to_dict(self, *, cap: int) -> dict[str, str]:
        """The window to store: buckets wholly older than the retention dropped, at most
        `cap` ids (the oldest buckets' earliest ids go first)."""
        buckets = self._buckets
        if self._new:
            buckets = dict(buckets)
            if len(self._new) == 1:  # the usual case: one new event of the lead
                ((d, key),) = self._new.items()
                buckets[key] = buckets.get(key, "") + d
            else:
                grouped: dict[str, list[str]] = {}
                for d, key in self._new.items():
                    grouped.setdefault(key, []).append(d)
                for key, ds in grouped.items():
                    buckets[key] = buckets.get(key, "") + "".join(ds)
        if len(buckets) > 1:
            horizon = max(map(int, buckets)) - self._retention_ms
            if any(int(k) + self._bucket_ms <= horizon for k in buckets):
                buckets = {k: v for k, v in buckets.items()
                           if int(k) + self._bucket_ms > horizon}
        excess = sum(map(len, buckets.values())) // WIDTH - cap
        if excess <= 0:
            return buckets
        kept = sorted(buckets.items(), key=lambda kv: int(kv[0]))
        while excess > 0 and kept:
            start, v = kept[0]
            n = len(v) // WIDTH
            if n <= excess:
                kept.pop(0)
                excess -= n
            else:
                kept[0] = (start, v[excess * WIDTH:])
                excess = 0
        return dict(kept)
