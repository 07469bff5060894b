"""The lead record cache: bounded, read through and written through the store, never holding
a value the store does not hold (a failed or uncommitted batch, a rebalance), and giving the
pipeline exactly the results it gives without it."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from pipeline.stream import transactions
from pipeline.stream.cache import DECODED_PER_BYTE, ENTRY_OVERHEAD, MISS, RecordCache
from pipeline.stream.codec import decode_event, decode_leads_line, unpack
from pipeline.stream.produce import Send
from pipeline.stream.stages.ingest import ingest
from pipeline.stream.stages.records import LeadRecord
from pipeline.stream.stages.score import score
from pipeline.stream.stages.stitch import stitch
from pipeline.stream.tables import LEAD_CODEC, BatchTable
from tests.support.stages import DEST, RULES, SOURCES, TOPIC, raw


def _cost(encoded_len: int) -> int:
    return encoded_len * DECODED_PER_BYTE + ENTRY_OVERHEAD


def test_the_cache_evicts_the_least_recently_used_within_its_bound() -> None:
    cache = RecordCache(3 * _cost(10))
    for k in (b"a", b"b", b"c"):
        cache.put(k, k.decode(), 10, cache.generation)
    assert cache.get(b"a") == "a"  # a is now the most recently used
    cache.put(b"d", "d", 10, cache.generation)
    assert cache.get(b"b") is MISS
    assert [cache.get(k) for k in (b"a", b"c", b"d")] == ["a", "c", "d"]
    assert cache.size == 3 * _cost(10) and len(cache) == 3
    # a bigger value pushes out as many as it needs; one bigger than the bound is not kept
    cache.put(b"e", "e", 2 * 10 + ENTRY_OVERHEAD // DECODED_PER_BYTE, cache.generation)
    assert len(cache) == 2 and cache.size <= 3 * _cost(10)
    cache.put(b"f", "f", 10**6, cache.generation)
    assert cache.get(b"f") is MISS
    # replacing a key's value counts its size once
    size = cache.size
    cache.put(b"e", "e2", 2 * 10 + ENTRY_OVERHEAD // DECODED_PER_BYTE, cache.generation)
    assert cache.get(b"e") == "e2" and cache.size == size
    assert (cache.hits, cache.misses) == (5, 2)


def test_a_value_from_before_a_clear_is_not_kept() -> None:
    cache = RecordCache(10**6)
    began = cache.generation
    cache.put(b"a", 1, 10, began)
    cache.clear()  # a rebalance while a batch is running
    assert cache.get(b"a") is MISS and cache.size == 0
    cache.put(b"b", 2, 10, began)  # that batch's write comes after the clear
    assert cache.get(b"b") is MISS
    cache.put(b"b", 3, 10, cache.generation)
    assert cache.get(b"b") == 3
    cache.discard([b"b", b"never"])
    assert cache.get(b"b") is MISS and cache.size == 0


def test_read_through_decodes_once_and_does_not_keep_absence() -> None:
    cache = RecordCache(10**6)
    store = {b"a": b'{"n":1}'}
    loads: list[bytes] = []

    def read(k: bytes) -> Any:
        def load() -> bytes | None:
            loads.append(k)
            return store.get(k)
        return cache.read(k, cache.generation, load, orjson.loads)

    assert read(b"a") == {"n": 1} and read(b"a") == {"n": 1}
    assert read(b"x") is None and read(b"x") is None
    assert loads == [b"a", b"x", b"x"]
    assert RecordCache(0).read(b"a", 0, lambda: store[b"a"], orjson.loads) == {"n": 1}
    with pytest.raises(ValueError, match="-1 bytes"):
        RecordCache(-1)


# -- BatchTable with a cache: a stand-in for Faust's table over a dict store --------------

class _Store:
    """A store as `faust_adapter.get_raw`/`set_raw` reach it; `fail_after` writes, it fails."""

    use_rocksdict = False

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.persisted: dict[Any, int] = {}
        self.fail_after: int | None = None

    def _get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def _set(self, key: bytes, value: bytes) -> None:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise OSError("disk full")
            self.fail_after -= 1
        self.data[key] = value

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class _Topic:
    def get_topic_name(self) -> str:
        return "lf-leads-changelog"


class _Table:
    def __init__(self) -> None:
        self.data = _Store()
        self.changelog_topic = _Topic()


@dataclass
class _Msg:
    partition: int


@dataclass
class _Ev:
    message: _Msg


@dataclass
class _Meta:
    topic: str
    partition: int
    offset: int


def _acked(sends: Sequence[Send]) -> list[_Meta]:
    return [_Meta(s.topic, s.partition or 0, i) for i, s in enumerate(sends)]


def _lead(n: int) -> tuple[str, LeadRecord]:
    ev = decode_event(orjson.dumps({"m": f"m{n}", "l": f"u{n}", "t": "identify",
                                    "ts": 1_767_225_600_000 + n, "uid": f"u{n}"}))
    out = score([ev], lambda _: None, RULES, DEST, dedup_retention_ms=10**9, routed_ms=0)
    return f"u{n}", out.writes[f"u{n}"]


def _batch(table: _Table, cache: RecordCache, keys: Sequence[str]) -> BatchTable:
    return BatchTable(table, {k.encode(): _Ev(_Msg(0)) for k in keys}, LEAD_CODEC, cache)


def test_a_batch_written_to_the_store_is_read_back_from_the_cache() -> None:
    table, cache = _Table(), RecordCache(10**7)
    key, rec = _lead(1)
    bt = _batch(table, cache, [key])
    assert bt.get(key) is None
    bt.apply(_acked(bt.stage({key: rec})))
    assert LeadRecord.decode(table.data.data[key.encode()]) == rec.as_stored()
    assert table.data.persisted  # the changelog offsets as before
    table.data.data[key.encode()] = b"not read"  # a hit does not touch the store
    assert _batch(table, cache, [key]).get(key) == rec.as_stored()


def test_a_failed_store_write_leaves_nothing_cached_that_may_not_be_stored() -> None:
    table, cache = _Table(), RecordCache(10**7)
    (k1, r1), (k2, r2) = _lead(1), _lead(2)
    first = _batch(table, cache, [k1, k2])
    first.apply(_acked(first.stage({k1: r1, k2: r2})))
    assert _batch(table, cache, [k1]).get(k1) == r1.as_stored()
    changed = {k1: _lead(3)[1], k2: _lead(4)[1]}
    bt = _batch(table, cache, [k1, k2])
    bt.get(k1)
    sends = bt.stage(changed)
    table.data.fail_after = 1  # k1 written, k2 not
    with pytest.raises(OSError):
        bt.apply(_acked(sends))
    # both are read from the store again, each as the store holds it
    assert _batch(table, cache, [k1]).get(k1) == changed[k1].as_stored()
    assert _batch(table, cache, [k2]).get(k2) == r2.as_stored()
    assert cache.hits == 2  # both before the failed write


def test_under_exactly_once_only_a_committed_batch_reaches_the_cache() -> None:
    table, cache = _Table(), RecordCache(10**7)
    key, rec = _lead(1)
    txn = transactions.BatchTransaction("tid", producer=None)  # type: ignore[arg-type]

    def in_transaction() -> None:
        token = transactions._current.set(txn)
        try:
            bt = _batch(table, cache, [key])
            bt.apply(_acked(bt.stage({key: rec})))
        finally:
            transactions._current.reset(token)

    contextvars.copy_context().run(in_transaction)
    # aborted: its after-commit callbacks never run, nothing was stored or cached
    assert table.data.data == {} and _batch(table, cache, [key]).get(key) is None
    for fn in txn._after:  # committed
        fn()
    table.data.data[key.encode()] = b"not read"
    assert _batch(table, cache, [key]).get(key) == rec.as_stored()


def test_a_batch_begun_before_a_rebalance_does_not_fill_the_cache() -> None:
    table, cache = _Table(), RecordCache(10**7)
    key, rec = _lead(1)
    bt = _batch(table, cache, [key])
    sends = bt.stage({key: rec})
    cache.clear()  # the partitions are revoked meanwhile
    bt.apply(_acked(sends))
    assert len(cache) == 0
    assert _batch(table, cache, [key]).get(key) == rec.as_stored()  # from the store


# -- the pipeline's results with and without the cache ----------------------------------

class _LeadsTable:
    """The leads table as bytes, read through `cache` when given (as the worker does)."""

    def __init__(self, cache: RecordCache | None) -> None:
        self.data: dict[bytes, bytes] = {}
        self.cache = cache

    def get(self, key: str) -> LeadRecord | None:
        k = key.encode()
        if self.cache is not None:
            value: LeadRecord | None = self.cache.read(
                k, self.cache.generation, lambda: self.data.get(k), LEAD_CODEC.decode)
            return value
        raw_value = self.data.get(k)
        return None if raw_value is None else LEAD_CODEC.decode(raw_value)

    def write(self, writes: dict[str, LeadRecord] | Any) -> None:
        for key, rec in writes.items():
            v = LEAD_CODEC.encode(rec)
            self.data[key.encode()] = v
            if self.cache is not None:
                self.cache.put(key.encode(), LEAD_CODEC.stored(rec), len(v),
                               self.cache.generation)


def _run(cache: RecordCache | None, batch: int) -> tuple[list[bytes], dict[bytes, bytes]]:
    from pipeline.simulator import generate

    msgs = [raw(i, m.value(), TOPIC[m.source]) for i, m in enumerate(generate(600, seed=5))]
    # each message twice, the copy a few batches later: the repeats hit the cached window
    msgs = msgs + msgs[:200]
    identity: dict[str, Any] = {}
    leads = _LeadsTable(cache)
    sent: list[bytes] = []
    for i in range(0, len(msgs), batch):
        ing = ingest(msgs[i:i + batch], SOURCES, DEST, max_bytes=65536,
                     max_future_skew_ms=10**12)
        items = [(decode_event(line), line) for s in ing.sends if s.topic == DEST.identity
                 for line in unpack(s.value)]
        st = stitch(items, identity.get, DEST, max_buffer=200)
        identity.update(st.writes)
        lines = [decode_leads_line(line, None) for s in st.sends for line in unpack(s.value)]
        sc = score(lines, leads.get, RULES, DEST, dedup_retention_ms=7 * 86_400_000,
                   routed_ms=1_767_225_600_000)
        leads.write(sc.writes)
        sent.extend(s.topic.encode() + b" " + (s.key or b"") + b" " + s.value for s in sc.sends)
        if cache is not None and i % (4 * batch) == 0:
            cache.clear()  # as at a rebalance
    if cache is not None:  # what it holds is what the store holds
        for k, v in leads.data.items():
            held = cache.get(k)
            assert held is MISS or held == LEAD_CODEC.decode(v), k
    return sent, leads.data


def test_the_pipeline_gives_the_same_outputs_and_state_with_the_cache() -> None:
    plain = _run(None, batch=40)
    big = RecordCache(10**8)
    assert _run(big, batch=40) == plain
    assert big.hits > 100  # the cache was used, not bypassed
    small = RecordCache(20 * _cost(1500))  # a few leads: evictions all the time
    assert _run(small, batch=40) == plain
    assert small.hits > 0
