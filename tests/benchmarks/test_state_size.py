"""Smoke test of benchmarks/state_size.py: a small run, its printed figures checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _figures(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+) (\d+(?:\.\d+)?)", line)}


def test_state_size_prints_positive_consistent_figures(tmp_path: Path) -> None:
    leads = 1500  # 4,500 events: three batches of 2,000, so active leads are rewritten
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.state_size", "--leads", str(leads),
         "--events-per-lead", "3", "--partitions", "4", "--batch", "2000",
         "--dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    head = _figures(lines[0])
    assert head["leads"] == leads and head["events"] == 3 * leads
    assert head["scored"] == 3 * leads  # every event reaches the leads table
    tables = {}
    for line in lines[1:3]:
        name = re.match(r"table (\w+):", line)
        assert name, line
        tables[name.group(1)] = _figures(line)
    assert set(tables) == {"identity", "leads"}
    for name, t in tables.items():
        assert t["keys"] == leads, name  # one identity record and one lead per lead
        for k in ("value_bytes", "rocksdb_disk_bytes", "rocksdb_sst_bytes",
                  "changelog_compacted_bytes", "changelog_written_bytes"):
            assert t[k] > 0, (name, k)
        assert t["rocksdb_sst_bytes"] <= t["rocksdb_disk_bytes"]
        # A log record holds the key and value plus framing: more than the values alone.
        assert t["changelog_compacted_bytes"] > t["value_bytes"]
        assert t["changelog_writes"] >= t["keys"]
        assert t["changelog_written_bytes"] >= t["changelog_compacted_bytes"] * 0.99
    # An active lead is written once per batch it has events in: more writes than leads.
    assert tables["leads"]["changelog_writes"] > leads
    total = _figures(lines[3])
    assert total["rocksdb_disk_bytes"] == sum(t["rocksdb_disk_bytes"] for t in tables.values())
    assert total["changelog_compacted_bytes"] == sum(
        t["changelog_compacted_bytes"] for t in tables.values())
    assert abs(total["rocksdb_bytes_per_lead"] - total["rocksdb_disk_bytes"] / leads) < 0.1
    assert abs(total["changelog_bytes_per_lead"]
               - total["changelog_compacted_bytes"] / leads) < 0.1
    # The stores really are on disk, one RocksDB per table partition, as Faust names them.
    dbs = sorted(p.name for p in (tmp_path / "state" / "leads").iterdir())
    assert dbs == [f"leads-{p}.db" for p in range(4)]
