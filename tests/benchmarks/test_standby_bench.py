"""Smoke test of the standby lag benchmark on a real broker, small scale."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_script


@pytest.mark.integration
@pytest.mark.slow
async def test_standby_lag_is_measured_on_every_standby_partition(kafka_bootstrap: str) -> None:
    mod = load_script("standby_bench")
    res = await mod.standby_bench(kafka_bootstrap, rate=300, seconds=8, leads=300,
                                  partitions=2, drain_s=8.0, timeout_s=240.0)
    # two workers, standby replicas 1: every partition of every table has one standby
    assert res["standby_partitions"] == sorted(
        f"{t}[{p}]" for t in ("identity", "leads", "owners") for p in (0, 1))
    assert res["samples"] > 0 and res["offered_s"] > 0
    # events sent over the time it took (offered_s is rounded to 0.1 s)
    assert res["offered_per_s"] == pytest.approx(300 * 8 / res["offered_s"], rel=0.02)
    assert 0 <= res["standby_lag_records_p99"] <= res["standby_lag_records_max"]
    assert 0 <= res["standby_lag_s_p99"] <= res["standby_lag_s_max"] <= res["offered_s"]
    # the seconds' resolution: a time between two samples, within the load
    assert 0 < res["sample_gap_s_max"] <= res["offered_s"]
