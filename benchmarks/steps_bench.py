"""The worker's per-batch work without Kafka (not a test): CPU time per stage per event.

Runs the same pure steps the stream agents run (`pipeline/stream/steps.py`: ingest, stitch,
score) over the end-to-end benchmark's generated Segment traffic (`traffic.py`), batch by
batch as the worker cuts them, with tables held as encoded bytes in dicts, so each read
decodes and each write encodes exactly as the worker's RocksDB store does. What it leaves
out is Kafka and Faust: fetching, producing, acks. Figures are this process's CPU time,
which a shared machine disturbs far less than wall time; comparing two commits with it
shows what a change to the hot path buys before `leadflow bench` measures it end to end.

    .venv/bin/python benchmarks/steps_bench.py [--events 200000] [--leads 50000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traffic import generate

from pipeline.core.rules import load_default_rules
from pipeline.settings import Topics
from pipeline.stream import emit
from pipeline.stream.codec import decode_event, dumps, encode_event, pack, unpack
from pipeline.stream.keys import partition_for
from pipeline.stream.steps import RawMessage, ingest_batch, score_batch, stitch_batch
from pipeline.stream.worker import tune_gc

PARTITIONS = 4
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Table:
    """A table as the worker's store keeps it: keys to encoded bytes."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: str) -> Any:
        raw = self.data.get(key.encode())
        return None if raw is None else orjson.loads(raw)

    def write(self, writes: dict[str, Any]) -> int:
        n = 0
        for key, value in writes.items():
            v = dumps(value)
            n += len(v)
            self.data[key.encode()] = v
        return n


def _envelopes(keyed: list[tuple[bytes, bytes]]) -> list[list[bytes]]:
    """(key, line) -> envelopes per partition, as `LeadflowApp._envelopes` cuts them."""
    by_part: dict[int, list[bytes]] = {}
    for key, line in keyed:
        by_part.setdefault(partition_for(key, PARTITIONS), []).append(line)
    return [unpack(env) for lines in by_part.values() for env in pack(lines)]


def run(events: int, leads: int, batch: int, seed: int) -> dict[str, Any]:
    """Push the traffic through ingest -> stitch -> score; CPU seconds per stage."""
    rules = load_default_rules()
    topics = Topics()
    sources = topics.inputs()
    by_source = {v: k for k, v in sources.items()}
    msgs = generate(events, leads, seed=seed, start_ms=T0, end_ms=T0 + 3_600_000)
    raw = [RawMessage(by_source[src], 0, i, T0 + 3_600_000, key, value)
           for i, (src, key, value) in enumerate(msgs)]
    tune_gc()  # as the worker does at start (the traffic stands in for its start-up heap)
    identity, lead_table = Table(), Table()
    cpu = {"ingest": 0.0, "stitch": 0.0, "score": 0.0}
    bytes_written = {"identity": 0, "leads": 0}
    counts = {"events": 0, "outputs": 0, "lead_writes": 0}
    clock: Callable[[], float] = time.process_time

    for i in range(0, len(raw), batch):
        t = clock()
        res = ingest_batch(raw[i:i + batch], sources, max_bytes=64 * 1024,
                           max_future_skew_ms=3_600_000)
        envs = _envelopes([(emit.identity_key_bytes(e), line)
                           for e, line in zip(res.events, res.encoded, strict=True)])
        cpu["ingest"] += clock() - t
        counts["events"] += len(res.events)

        t = clock()
        decoded = [decode_event(line) for env in envs for line in env]
        st = stitch_batch(decoded, identity.get)
        bytes_written["identity"] += identity.write(st.writes)
        lines = _envelopes([(e.lead_id.encode(), encode_event(e)) for e in st.forward])
        cpu["stitch"] += clock() - t

        t = clock()
        evs = [decode_event(line) for env in lines for line in env]
        sc = score_batch(evs, lead_table.get, rules, dedup_retention_ms=7 * 86_400_000)
        p = emit.plan_scored(sc.outputs, sc.writes, evs, lead_table.get, rules.routing, topics,
                                 free_mail=rules.free_email)
        bytes_written["leads"] += lead_table.write(sc.writes)
        cpu["score"] += clock() - t
        counts["outputs"] += len(p.sends) + len(p.assign)
        counts["lead_writes"] += len(sc.writes)

    total = sum(cpu.values())
    n = counts["events"]
    return {
        "events": n, "leads": leads, "batch": batch, **counts,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "us_per_event": {k: round(v / n * 1e6, 2) for k, v in cpu.items()},
        "events_per_cpu_s": round(n / total),
        "bytes_written_per_event": {k: round(v / n, 1) for k, v in bytes_written.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--leads", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=4000, help="input messages per batch")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = run(a.events, a.leads, a.batch, a.seed)
    if a.json:
        print(json.dumps(out))
        return
    print(f"{out['events']:,} events, {a.leads:,} leads, batches of {a.batch}: "
          f"{out['events_per_cpu_s']:,} events per CPU second")
    for stage, us in out["us_per_event"].items():
        print(f"  {stage:7s} {us:7.2f} us/event  ({out['cpu_s'][stage]} s)")
    print(f"  table bytes written per event: {out['bytes_written_per_event']}")


if __name__ == "__main__":
    main()
