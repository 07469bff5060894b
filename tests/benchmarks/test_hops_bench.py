"""Smoke test of the per-hop latency benchmark on a real broker, small scale."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_script


@pytest.mark.integration
@pytest.mark.slow
async def test_every_event_is_followed_through_each_hop(kafka_bootstrap: str) -> None:
    mod = load_script("hops_bench")
    res = await mod.hops_bench(kafka_bootstrap, rate=300, seconds=6, leads=300,
                               partitions=2, timeout_s=240.0)
    hops = res["hops"]
    # every event offered is found on the input topics and, once caught up, on both
    # internal topics: ingest and stitch forward every live event of a known lead
    assert res["events"] == 300 * 6
    assert hops["input>identity"]["n"] == hops["identity>leads"]["n"] == res["events"]
    assert res["input>leads"]["n"] == res["events"]
    # some of the activity raises alerts, each followed to its routing topic
    assert res["alerts"] > 0 and hops["input>routing"]["n"] == res["alerts"]
    for name, f in hops.items():
        if f["n"]:
            # record timestamps are taken in order along the path: no hop is negative
            assert 0 <= f["p50_ms"] <= f["p99_ms"] <= f["max_ms"], name
    # the worker's CPU over the phase is measured (its process is read, not assumed)
    assert res["worker_cpu_s"] > 0.1  # the worker process was read while it worked
    # events over that CPU time (which is rounded to 0.01 s)
    assert res["events_per_cpu_s"] == pytest.approx(res["events"] / res["worker_cpu_s"],
                                                    rel=0.02)
    # the hops of the events seen everywhere cannot be longer than the whole path
    assert hops["input>identity*"]["max_ms"] <= hops["input>routing"]["max_ms"]
