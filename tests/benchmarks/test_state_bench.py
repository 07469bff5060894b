"""Smoke test of the memory and recovery benchmark on a real broker, small scale."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_script


@pytest.mark.integration
@pytest.mark.slow
async def test_a_fresh_worker_recovers_every_sampled_lead(kafka_bootstrap: str) -> None:
    mod = load_script("state_bench")
    res = await mod.state_bench(kafka_bootstrap, leads=500, sample=50, timeout_s=180.0)
    assert res["leads"] == 500
    # the second worker started with an empty state folder and still serves the leads:
    # their state came back from the changelog topics
    assert res["sample"] == 50 and res["sample_found"] == 50
    assert res["recovery_s"] > 0 and res["processing_s"] > 0
    assert res["events_per_s"] == pytest.approx(500 / res["processing_s"], rel=0.01)
    assert 30 < res["rss_mb"] <= res["peak_rss_mb"]
    assert res["rocksdb_mb"] > 0
