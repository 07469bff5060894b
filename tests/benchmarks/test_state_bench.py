"""Smoke test of the memory and recovery benchmark on a real broker, small scale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "state_bench.py"


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("leadflow_state_bench_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.integration
@pytest.mark.slow
async def test_a_fresh_worker_recovers_every_sampled_lead(kafka_bootstrap: str) -> None:
    mod = _load()
    res = await mod.state_bench(kafka_bootstrap, leads=500, sample=50, timeout_s=180.0)
    assert res["leads"] == 500
    # the second worker started with an empty state folder and still serves the leads:
    # their state came back from the changelog topics
    assert res["sample"] == 50 and res["sample_found"] == 50
    assert res["recovery_s"] > 0 and res["processing_s"] > 0
    assert res["events_per_s"] == pytest.approx(500 / res["processing_s"], rel=0.01)
    assert 30 < res["rss_mb"] <= res["peak_rss_mb"]
    assert res["rocksdb_mb"] > 0
