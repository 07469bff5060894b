"""`leadflow demo`: every run plays its own traffic; `--reset` deletes what runs left behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.demo import DemoRun, reset_demo
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.simulator import generate

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _ids(run: DemoRun) -> tuple[set[str], set[str]]:
    msgs = list(generate(50, seed=run.seed, id_prefix=run.id_prefix))
    return ({m.body["messageId"] for m in msgs},
            {m.body["userId"] for m in msgs if "userId" in m.body})


def test_each_run_has_its_own_seed_and_leads() -> None:
    a, b = DemoRun.starting(T0), DemoRun.starting(T0 + timedelta(milliseconds=1))
    assert a == DemoRun.starting(T0)  # derived from the start instant alone
    assert a.seed != b.seed and a.id_prefix != b.id_prefix
    assert a.lead(7) == f"user-{a.id_prefix}0000007"
    (msgs_a, users_a), (msgs_b, users_b) = _ids(a), _ids(b)
    # No message of the second run is a duplicate of the first's, and no second journey
    # lands on a lead of the first run.
    assert msgs_a and users_a and not msgs_a & msgs_b and not users_a & users_b
    assert all(u.startswith(f"user-{a.id_prefix}") for u in users_a)


def test_the_simulator_alone_stays_deterministic() -> None:
    # `leadflow simulate` and the tests keep seed 7 and unprefixed ids.
    first = [m.body for m in generate(20)]
    assert first == [m.body for m in generate(20)]
    assert any(b.get("userId", "").startswith("user-000000") for b in first)


def test_reset_says_what_it_deletes_then_deletes_it_and_keeps_the_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEADFLOW_BOOTSTRAP_SERVERS", raising=False)
    s = Settings(home=tmp_path, app_id="leadflow", bootstrap_servers=None)
    state = s.home / "worker" / "leadflow"
    (state / "tables").mkdir(parents=True)
    (s.kafka_dir / "data" / "events.web-0").mkdir(parents=True)
    jars = s.kafka_dir / "lib-3.9.1"
    jars.mkdir()
    (jars / "kafka.jar").write_bytes(b"jar")
    (s.home / "demo-worker.log").write_text("log")
    said: list[str] = []
    deleted = reset_demo(s, said.append)
    assert said == [
        f"deleting {state} (the worker's tables (RocksDB): leads, identities, owners, "
        "seen message ids)",
        f"deleting {s.kafka_dir / 'data'} (the local broker's data: topics, changelogs and "
        "committed offsets)",
        f"deleting {s.home / 'demo-worker.log'} (the demo worker's log)",
    ]
    assert deleted == [state, s.kafka_dir / "data", s.home / "demo-worker.log"]
    assert not any(p.exists() for p in deleted)
    assert (jars / "kafka.jar").read_bytes() == b"jar"
    said.clear()
    assert reset_demo(s, said.append) == []
    assert said == [f"nothing to reset: no demo state in {tmp_path}"]


def test_reset_never_touches_a_configured_cluster(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, bootstrap_servers="kafka-1:9092")
    (s.home / "worker" / s.app_id).mkdir(parents=True)
    with pytest.raises(ConfigError, match="only resets the local development broker"):
        reset_demo(s, print)
    assert (s.home / "worker" / s.app_id).is_dir()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_default_demo_traffic_fits_what_the_shipped_teams_can_work(seed: int) -> None:
    # The demo's traffic through the core: no team gets more alerts in the day than its
    # reps' daily caps allow, so alerts get owners instead of piling up unowned.
    from pipeline.backtest import alerts_per_team_day, run, stitch
    from pipeline.core.rules import load_default_rules
    from pipeline.models.events import parse_message
    from pipeline.simulator import DEMO_VISITORS, generate

    rules = load_default_rules()
    start = 1_764_579_600_000  # a Monday, 09:00 UTC: the teams' working day
    events = [parse_message(m.value(), source=m.source)
              for m in generate(DEMO_VISITORS, seed=seed, start_ms=start)]
    per_day = alerts_per_team_day(run(stitch(events), rules), rules)
    assert per_day, "the demo's traffic raises no alert at all"
    for team in rules.routing.teams:
        caps = [r.daily_cap for r in team.reps]
        if any(c is None for c in caps):
            continue  # a rep without a cap: the team takes any number
        for day, counts in per_day.items():
            assert counts.get(team.name, 0) <= sum(c for c in caps if c is not None), \
                (team.name, day, counts)
    assert any(counts.get("enterprise", 0) > 0 for counts in per_day.values())
