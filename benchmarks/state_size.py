"""State size per lead, measured (not a test): RocksDB bytes on disk and changelog bytes.

Builds the worker's tables for N leads with the same pure steps the worker runs
(`pipeline.stream.stages`: ingest -> stitch -> score, batches of `BATCH_MAX` messages) over the
benchmark traffic (`benchmarks/traffic.py`: every lead identified first, then a skewed
page/e-mail/product/CRM mix), then stores the final tables the way faust-streaming does:

- values serialised by Faust's `json` codec (the tables' value serializer), keys raw bytes;
- one RocksDB per table partition (`<table>-<partition>.db`), opened with Faust's own
  `RocksDBOptions().open` (rocksdict, raw mode), keys placed by Kafka's default partitioner;
- changelog bytes as Kafka stores them: record batches built by aiokafka's record builder
  (uncompressed, 16 KiB batches, Faust's producer default), for the compacted changelog (one
  record per key) and for every write the build made (before compaction).

    .venv/bin/python benchmarks/state_size.py [--leads 100000] [--events-per-lead 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.serializers import codecs
from faust.stores.rocksdb import RocksDBOptions

from benchmarks.traffic import generate
from pipeline.core.rules import load_default_rules
from pipeline.settings import Settings
from pipeline.stream.app import BATCH_MAX
from pipeline.stream.stages.ingest import ingest_batch
from pipeline.stream.stages.records import RawMessage
from pipeline.stream.stages.score import score_batch
from pipeline.stream.stages.stitch import stitch_batch

PRODUCER_BATCH_BYTES = 16384  # aiokafka's max_batch_size, which Faust's producer keeps
DAY_MS = 86_400_000
END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as the keyed internal topics use it."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def log_bytes(records: Iterable[tuple[bytes, bytes]]) -> int:
    """Bytes of these records in Kafka's log format v2 (uncompressed record batches)."""
    total = 0
    builder: Any = None
    offset = 0
    for key, value in records:
        if builder is None:
            builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, PRODUCER_BATCH_BYTES)
            offset = 0
        if builder.append(offset, 0, key, value, []) is None:
            total += len(builder.build())
            builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, PRODUCER_BATCH_BYTES)
            offset = 0
            builder.append(offset, 0, key, value, [])
        offset += 1
    if builder is not None:
        total += len(builder.build())
    return total


@dataclass
class Table:
    """A table as the worker's steps see it, plus every changelog record written to it."""

    name: str
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: int = 0
    written_log_bytes: int = 0

    def put_all(self, writes: dict[str, dict[str, Any]]) -> None:
        self.data.update(writes)
        self.writes += len(writes)
        self.written_log_bytes += log_bytes(
            (k.encode(), codecs.dumps("json", v)) for k, v in writes.items())


def build_tables(leads: int, events: int, seed: int,
                 batch: int = BATCH_MAX) -> tuple[Table, Table, int]:
    """Run ingest, stitch and score over the traffic; (identity, leads, events scored)."""
    settings = Settings()
    rules = load_default_rules()
    traffic = generate(events, leads, seed=seed, start_ms=END_MS - 30 * DAY_MS, end_ms=END_MS)
    topics = settings.topics
    by_source = {v: k for k, v in topics.inputs().items()}
    identity, lead_table = Table("identity"), Table("leads")
    scored = 0
    retention_ms = int(settings.dedup_retention_s * 1000)
    for start in range(0, len(traffic), batch):
        chunk = traffic[start:start + batch]
        msgs = [RawMessage(by_source[src], 0, start + i, END_MS, key, value)
                for i, (src, key, value) in enumerate(chunk)]
        ing = ingest_batch(msgs, topics.inputs(), max_bytes=settings.max_message_bytes,
                           max_future_skew_ms=int(settings.max_future_skew_s * 1000))
        assert not ing.rejected, ing.rejected[:1]
        st = stitch_batch(ing.events, identity.data.get)
        identity.put_all(st.writes)
        sc = score_batch(st.forward, lead_table.data.get, rules, dedup_retention_ms=retention_ms)
        lead_table.put_all(sc.writes)
        scored += len(st.forward)
    return identity, lead_table, scored


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_rocksdb(table: Table, datadir: Path, partitions: int) -> tuple[int, int]:
    """Write the table's final values into one RocksDB per partition; (all bytes, .sst bytes)."""
    options = RocksDBOptions()
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for k, v in table.data.items():
        key = k.encode()
        by_part.setdefault(partition_of(key, partitions), []).append(
            (key, codecs.dumps("json", v)))
    for p, items in sorted(by_part.items()):
        db = options.open(datadir / f"{table.name}-{p}.db")
        for key, value in items:  # as Faust's store does: one put per table write
            db.put(key, value)
        db.flush()
        db.close()
    sst = sum(f.stat().st_size for f in datadir.rglob("*.sst"))
    return dir_bytes(datadir), sst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leads", type=int, default=100_000)
    ap.add_argument("--events-per-lead", type=float, default=3.0,
                    help="average; default 3, the shape of `leadflow bench` (300,000/100,000)")
    ap.add_argument("--partitions", type=int, default=Settings().partitions)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a tmp dir)")
    ap.add_argument("--batch", type=int, default=BATCH_MAX,
                    help="input messages per batch (one table write per key per batch); "
                    "default: the worker's")
    args = ap.parse_args()
    events = max(args.leads, int(args.leads * args.events_per_lead))
    t0 = time.perf_counter()
    identity, leads, scored = build_tables(args.leads, events, args.seed, args.batch)
    build_s = time.perf_counter() - t0
    root = args.dir or Path(tempfile.mkdtemp(prefix="leadflow-state-"))
    try:
        print(f"leads {args.leads} events {events} scored {scored} partitions "
              f"{args.partitions} (built in {build_s:.1f} s)")
        total_disk = 0
        total_compacted = 0
        for table in (identity, leads):
            datadir = root / table.name
            datadir.mkdir(parents=True, exist_ok=False)
            disk, sst = write_rocksdb(table, datadir, args.partitions)
            compacted = log_bytes(
                (k.encode(), codecs.dumps("json", v)) for k, v in table.data.items())
            values = sum(len(codecs.dumps("json", v)) for v in table.data.values())
            total_disk += disk
            total_compacted += compacted
            print(f"table {table.name}: keys {len(table.data)} value_bytes {values} "
                  f"rocksdb_disk_bytes {disk} rocksdb_sst_bytes {sst} "
                  f"changelog_compacted_bytes {compacted} changelog_writes {table.writes} "
                  f"changelog_written_bytes {table.written_log_bytes}")
        print(f"total: rocksdb_disk_bytes {total_disk} "
              f"rocksdb_bytes_per_lead {total_disk / args.leads:.1f} "
              f"changelog_compacted_bytes {total_compacted} "
              f"changelog_bytes_per_lead {total_compacted / args.leads:.1f}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)



if __name__ == "__main__":
    main()
