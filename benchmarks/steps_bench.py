"""The worker's per-batch work without Kafka (not a test): CPU time per stage per event.

Runs the same pure steps the stream agents run (`pipeline/stream/stages/`: ingest, stitch,
score) over the end-to-end benchmark's generated Segment traffic (`traffic.py`), batch by
batch as the worker cuts them, with tables held as encoded bytes in dicts, so each read
decodes and each write encodes exactly as the worker's RocksDB store does. What it leaves
out is Kafka and Faust: fetching, producing, acks. Figures are this process's CPU time,
which a shared machine disturbs far less than wall time; comparing two commits with it
shows what a change to the hot path buys before `leadflow bench` measures it end to end.

    .venv/bin/python benchmarks/steps_bench.py [--events 200000] [--leads 50000] [--json]
        [--lead-cache-mb 64]   # default: the worker's (0: every lead read and decoded)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traffic import generate

from pipeline.core.rules import load_default_rules
from pipeline.settings import Settings, Topics
from pipeline.stream.cache import RecordCache
from pipeline.stream.codec import decode_event, decode_leads_line, unpack
from pipeline.stream.stages.ingest import ingest
from pipeline.stream.stages.records import Destinations, RawMessage
from pipeline.stream.stages.score import score
from pipeline.stream.stages.stitch import stitch
from pipeline.stream.tables import JSON, LEAD_CODEC, TableCodec
from pipeline.stream.worker import tune_gc

PARTITIONS = 4
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Table:
    """A table as the worker's store keeps it: keys to encoded bytes, decoded on read (by
    the table's codec, through its record cache when it has one, as `tables.BatchTable`)."""

    def __init__(self, codec: TableCodec = JSON, cache: RecordCache | None = None) -> None:
        self.data: dict[bytes, bytes] = {}
        self.codec = codec
        self.cache = cache

    def get(self, key: str) -> Any:
        k = key.encode()
        if self.cache is not None:
            return self.cache.read(k, self.cache.generation, lambda: self.data.get(k),
                                   self.codec.decode)
        raw = self.data.get(k)
        return None if raw is None else self.codec.decode(raw)

    def write(self, writes: Mapping[str, Any]) -> int:
        n = 0
        for key, value in writes.items():
            v = self.codec.encode(value)
            n += len(v)
            k = key.encode()
            self.data[k] = v
            if self.cache is not None:
                self.cache.put(k, self.codec.stored(value), len(v), self.cache.generation)
        return n


def run(events: int, leads: int, batch: int, seed: int,
        lead_cache_mb: int = 0) -> dict[str, Any]:
    """Push the traffic through ingest -> stitch -> score; CPU seconds per stage."""
    rules = load_default_rules()
    topics = Topics()
    sources = topics.inputs()
    by_source = {v: k for k, v in sources.items()}
    msgs = generate(events, leads, seed=seed, start_ms=T0, end_ms=T0 + 3_600_000)
    raw = [RawMessage(by_source[src], 0, i, T0 + 3_600_000, key, value)
           for i, (src, key, value) in enumerate(msgs)]
    tune_gc()  # as the worker does at start (the traffic stands in for its start-up heap)
    cache = RecordCache(lead_cache_mb * 1024 * 1024)
    identity, lead_table = Table(), Table(LEAD_CODEC, cache)
    cpu = {"ingest": 0.0, "stitch": 0.0, "score": 0.0}
    bytes_written = {"identity": 0, "leads": 0}
    counts = {"events": 0, "outputs": 0, "lead_writes": 0}
    clock: Callable[[], float] = time.process_time

    dest = Destinations.of(topics, "bench", PARTITIONS, rules.version)
    for i in range(0, len(raw), batch):
        t = clock()
        ing = ingest(raw[i:i + batch], sources, dest, max_bytes=64 * 1024,
                     max_future_skew_ms=3_600_000)
        cpu["ingest"] += clock() - t
        counts["events"] += len(ing.events)

        t = clock()
        items = [(decode_event(line), line) for s in ing.sends if s.topic == dest.identity
                 for line in unpack(s.value)]
        st = stitch(items, identity.get, dest, max_buffer=200)
        bytes_written["identity"] += identity.write(st.writes)
        cpu["stitch"] += clock() - t

        t = clock()
        lines = [decode_leads_line(line, None) for s in st.sends for line in unpack(s.value)]
        sc = score(lines, lead_table.get, rules, dest, dedup_retention_ms=7 * 86_400_000,
                   routed_ms=T0 + 3_600_000)
        bytes_written["leads"] += lead_table.write(sc.writes)
        cpu["score"] += clock() - t
        counts["outputs"] += len(sc.sends)
        counts["lead_writes"] += len(sc.writes)

    total = sum(cpu.values())
    n = counts["events"]
    return {
        "events": n, "leads": leads, "batch": batch, **counts,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "us_per_event": {k: round(v / n * 1e6, 2) for k, v in cpu.items()},
        "events_per_cpu_s": round(n / total),
        "bytes_written_per_event": {k: round(v / n, 1) for k, v in bytes_written.items()},
        "lead_cache_mb": lead_cache_mb,
        "lead_cache_hit_rate": round(cache.hits / max(1, cache.hits + cache.misses), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--leads", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=4000, help="input messages per batch")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--lead-cache-mb", type=int, default=Settings().lead_cache_mb,
                    help="the worker's lead record cache (LEADFLOW_LEAD_CACHE_MB; 0: none)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = run(a.events, a.leads, a.batch, a.seed, a.lead_cache_mb)
    if a.json:
        print(json.dumps(out))
        return
    print(f"{out['events']:,} events, {a.leads:,} leads, batches of {a.batch}: "
          f"{out['events_per_cpu_s']:,} events per CPU second")
    for stage, us in out["us_per_event"].items():
        print(f"  {stage:7s} {us:7.2f} us/event  ({out['cpu_s'][stage]} s)")
    print(f"  table bytes written per event: {out['bytes_written_per_event']}")
    print(f"  lead record cache {a.lead_cache_mb} MB: hit rate {out['lead_cache_hit_rate']}")


if __name__ == "__main__":
    main()
