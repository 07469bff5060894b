"""Smoke test of benchmarks/collector_bench.py: a small run as a script, its JSON checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_every_accepted_event_is_on_the_input_topics(kafka_bootstrap: str) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/collector_bench.py", "--bootstrap", kafka_bootstrap,
         "--events", "2000", "--clients", "2", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(run.stdout)
    # Behaviour, not pace: the figures depend on the machine's load.
    assert r["events_accepted"] == r["records_on_topics"] == 2000
    assert r["records_match"] is True
    assert r["non_200"] == {} and r["client_errors"] == {}
    assert r["events_rejected"] == 0 and r["dead_letters"] == 0
    # Batches of up to 100 messages of one source: one partial batch per source at most.
    assert 20 <= r["requests"] <= 23
    lat = r["latency_ms"]
    assert all(lat[k] > 0 for k in ("p50", "p95", "p99", "max"))
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["events_per_s"] > 0 and r["requests_per_s"] > 0
    assert r["collector_cpu_s"] > 0 and r["events_per_collector_cpu_s"] > 0
    assert r["commit"] and r["machine"]["cores"] >= 1
