"""Smoke tests of the end-to-end benchmark on a real broker, small scale: the `limit` system,
and `quix_leadflow` (leadflow's stages in a Quix Streams application, in the quix venv)."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_script


@pytest.mark.integration
@pytest.mark.slow
async def test_limit_consumes_every_event(kafka_bootstrap: str) -> None:
    mod = load_script("e2e_bench")
    report = await mod.bench(kafka_bootstrap, events=20000, leads=2000, systems=["limit"],
                             rate=1000.0, latency_s=1.0, max_s=60.0, drain_s=30.0)
    r = report["systems"]["limit"]
    assert r["available"], r["reason"]
    # Correctness, not pace: the producer's reached rate depends on the machine's load.
    assert r["complete"] and r["drained"], r["notes"]
    assert r["decoded"] == 20000  # exactly the throughput events, none twice
    assert r["latency_events"] == 1000
    assert r["events_per_s"] is not None and r["events_per_s"] > 0
    assert r["p50_ms"] is not None and r["p99_ms"] is not None and r["p50_ms"] <= r["p99_ms"]
    assert r["peak_rss_mb"] is not None and r["peak_rss_mb"] > 10
    # What the latency phase cost the process, and how long it waited for a core.
    assert r["latency_events_per_cpu_s"] is not None and r["latency_events_per_cpu_s"] > 0
    assert r["latency_runqueue_s"] is not None and r["latency_runqueue_s"] >= 0
    # The published rate is the committed events over the span. Both figures are rounded
    # (seconds to 0.01, the rate to 0.1): the rate lies within what the span's rounding allows,
    # which on a fast run of half a second is more than 1 %.
    s = r["seconds"]
    assert s is not None and s > 0.005
    assert 20000 / (s + 0.005) - 0.05 <= r["events_per_s"] <= 20000 / (s - 0.005) + 0.05


@pytest.mark.integration
@pytest.mark.slow
async def test_quix_leadflow_validates_every_event_and_alerts(kafka_bootstrap: str) -> None:
    mod = load_script("e2e_bench")
    report = await mod.bench(kafka_bootstrap, events=5000, leads=500, systems=["quix_leadflow"],
                             rate=500.0, latency_s=2.0, max_s=120.0, drain_s=30.0)
    r = report["systems"]["quix_leadflow"]
    assert r["available"], r["reason"]
    assert r["complete"] and r["drained"], r["notes"]
    # through its ingest step exactly once, internal hops drained (`complete` counts them)
    assert r["decoded"] == 5000
    # the enterprise and sales teams work around the clock: some of the latency phase's
    # demo requests reach a team topic whatever the time of day
    assert r["latency_events"] > 0
    assert r["p50_ms"] is not None and r["p99_ms"] is not None and r["p50_ms"] <= r["p99_ms"]
    assert r["events_per_s"] is not None and r["events_per_s"] > 0
    assert r["cpu_s"] is not None and r["cpu_s"] > 0


@pytest.mark.integration
async def test_leadflow_latency_is_alert_record_time_minus_trigger_time(
        kafka_bootstrap: str) -> None:
    import uuid

    import orjson
    from aiokafka import AIOKafkaProducer

    from pipeline.kafka.topics import TopicSpec, ensure_topics

    mod = load_script("e2e_bench")
    prefix = f"bench-test-{uuid.uuid4().hex[:6]}.routing."
    team, nurture = f"{prefix}team-a", f"{prefix}nurture"
    await ensure_topics(kafka_bootstrap, [TopicSpec(t, 2, 1, {}) for t in (team, nurture)])
    import time

    since = int(time.time() * 1000)
    sends = [  # (topic, triggered_ms, record timestamp, reassigned)
        (team, since, since + 40, False),          # 40 ms
        (team, since + 500, since + 510, False),   # 10 ms
        (team, since + 900, since + 1200, False),  # 300 ms
        (team, since - 1, since + 5, False),       # triggered before the latency phase
        (team, since + 100, since + 99_000, True),  # an SLA re-send, not a first alert
        (nurture, since + 100, since + 150, False),  # a hand-off, not an alert
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i, (topic, triggered, ts, reassigned) in enumerate(sends):
            body = {"alert_id": f"a{i}", "triggered_ms": triggered, "reassigned": reassigned}
            await producer.send_and_wait(topic, orjson.dumps(body), key=f"lead-{i}".encode(),
                                         timestamp_ms=ts)
    finally:
        await producer.stop()
    lats = await mod._alert_latencies(kafka_bootstrap, prefix, since)
    assert sorted(lats) == [10.0, 40.0, 300.0]
    assert mod._p50_p99(lats) == (40.0, 300.0)
