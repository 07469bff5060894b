"""The bench's leadflow workers use only the run's own topics."""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import Topics
from tests.support.benchmarks import load_script


def test_every_topic_of_a_bench_worker_is_under_the_runs_prefix(tmp_path: Path) -> None:
    mod = load_script("e2e_bench")
    inputs = {s: f"bench-1-x.leadflow.events.{s}" for s in mod.SOURCES}
    run = mod.Run(bootstrap="127.0.0.1:1", prefix="bench-1-x", events=1, leads=1, rate=1.0,
                  latency_s=1.0, partitions=2, workdir=tmp_path, max_s=1.0, drain_s=1.0,
                  inputs=inputs)
    env = mod.leadflow_env(run, "g", 1234, tmp_path / "home")
    topics = Topics(**{name: env[f"LEADFLOW_TOPIC_{name.upper()}"]
                       for name in Topics.model_fields})
    defaults = Topics()
    for name in Topics.model_fields:
        got, shared = getattr(topics, name), getattr(defaults, name)
        assert got != shared and got.startswith("bench-1-x."), (name, got)
    assert topics.inputs() == {t: s for s, t in inputs.items()}
    assert topics.rules == "bench-1-x.leadflow.rules"
