"""Smoke test of the memory and recovery benchmark on a real broker, small scale."""

from __future__ import annotations

import time

import pytest

from tests.support.benchmarks import load_script


@pytest.mark.integration
@pytest.mark.slow
async def test_a_fresh_worker_recovers_every_sampled_lead(kafka_bootstrap: str) -> None:
    mod = load_script("state_bench")
    t0 = time.monotonic()
    res = await mod.state_bench(kafka_bootstrap, leads=500, sample=50, timeout_s=180.0)
    assert res["leads"] == 500
    # the second worker started with an empty state folder and still serves the leads:
    # their state came back from the changelog topics
    assert res["sample"] == 50 and res["sample_found"] == 50
    # Checked against the test's own clock, not the script's formula: both phases ran
    # inside this call, so neither can take longer than it, nor the rate be lower.
    elapsed = time.monotonic() - t0
    assert 0 < res["recovery_s"] < elapsed and 0 < res["processing_s"] < elapsed
    assert res["events_per_s"] > 500 / elapsed
    assert 30 < res["rss_mb"] <= res["peak_rss_mb"]
    assert res["rocksdb_mb"] > 0
    # every lead and identity came back through a changelog record: at least one each
    assert res["changelog_records"] >= 2 * 500
    assert res["restore_records_per_s"] == pytest.approx(
        res["changelog_records"] / res["recovery_s"], rel=0.05)
