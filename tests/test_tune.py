"""`leadflow rules tune`: hot and MQL lines fitted to a team's capacity on generated traffic."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from pipeline.backtest import alerts_per_team_day, run, stitch
from pipeline.cli.main import app
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger
from pipeline.core.routing import Team
from pipeline.core.rules import CompiledRules, load_default_rules
from pipeline.models.events import parse_message
from pipeline.simulator import generate
from pipeline.tune import STEP, Lines, TuneError, capacity, propose, with_lines

DAY = 86_400_000
DAYS = 3
RULES = load_default_rules()  # enterprise: rep-erin daily_cap 25 + rep-omar 15, every day


@pytest.fixture(scope="module")
def traffic() -> list[Event]:
    msgs = generate(1200, seed=5, spread_ms=DAYS * DAY)
    return stitch([parse_message(m.value(), source=m.source) for m in msgs])


def team_alerts(events: list[Event], rules: CompiledRules, team: str) -> int:
    per_day = alerts_per_team_day(run(events, rules), rules)
    return sum(day.get(team, 0) for day in per_day.values())


def lower(lines: Lines) -> CompiledRules | None:
    return with_lines(RULES, Lines(lines.hot - STEP, lines.mql - STEP))


@pytest.mark.parametrize("per_day", [None, 10])
def test_the_proposed_lines_are_the_lowest_that_fit_the_capacity(
        traffic: list[Event], per_day: int | None) -> None:
    p = propose(traffic, RULES, team="enterprise", per_day=per_day)
    (cap,) = p.capacities
    assert (cap.days, cap.working_days) == (DAYS + 1, DAYS + 1)  # the spread ends a day later
    assert cap.total == (40 if per_day is None else per_day) * (DAYS + 1)
    assert p.proposed is not None
    new = with_lines(RULES, p.proposed.lines)
    assert new is not None
    got = team_alerts(traffic, new, "enterprise")
    assert got == p.proposed.alerts["enterprise"] <= cap.total
    below = lower(p.proposed.lines)
    assert below is None or team_alerts(traffic, below, "enterprise") > cap.total
    assert p.proposed.lines.hot - p.proposed.lines.mql == RULES.hot - RULES.mql
    if per_day == 10:  # tighter than today's alerts: the line goes up
        assert p.now.alerts["enterprise"] > cap.total
        assert p.proposed.lines.hot > RULES.hot


def test_no_line_fits_when_instant_alerts_alone_exceed_it(traffic: list[Event]) -> None:
    p = propose(traffic, RULES, team="enterprise", per_day=0)
    assert p.proposed is None
    assert p.floor["enterprise"] > 0
    instant = sum(1 for o in run(traffic, RULES).outputs
                  if isinstance(o, AlertTrigger) and o.kind == "instant")
    assert instant > 0


def test_all_teams_share_one_line_and_skip_teams_without_caps(traffic: list[Event]) -> None:
    p = propose(traffic, RULES, per_day=20)
    working = {c.team: c.working_days for c in p.capacities}
    assert working == {"enterprise": 4, "emea": 2, "sales": 4}  # emea: mon-fri hours
    assert p.proposed is not None
    assert all(p.proposed.alerts.get(c.team, 0) <= c.total for c in p.capacities)
    caps_only = propose(traffic, RULES)
    assert [c.team for c in caps_only.capacities] == ["enterprise"]
    assert set(caps_only.unfitted) == {"emea", "sales"}
    assert "rep-lena, rep-paul have no daily_cap" in caps_only.unfitted["emea"]


def test_working_days_and_days_away_count_in_the_capacity() -> None:
    team = Team.model_validate({
        "name": "t", "hours": {"mon-fri": "09:00-17:00"},
        "reps": [{"id": "a", "daily_cap": 5},
                 {"id": "b", "daily_cap": 3, "away": [{"from": "2026-01-05", "to": "2026-01-05"}]},
                 {"id": "c", "daily_cap": 100, "available": False}]})
    days = [dt.date(2026, 1, 2) + dt.timedelta(days=i) for i in range(4)]  # fri sat sun mon
    c = capacity(team, days)
    assert (c.total, c.working_days, c.days) == (5 + 3 + 5, 2, 4)
    assert capacity(team, days, per_day=7).total == 14


@pytest.mark.parametrize(("team", "per_day", "says"), [
    ("nope", None, "no team 'nope' in the rules (teams: enterprise, emea, sales)"),
    ("enterprise", -3, "capacity must be 0 or more alerts per working day, got -3"),
    ("emea", None, "team 'emea': rep(s) rep-lena, rep-paul have no daily_cap"),
])
def test_bad_input_is_a_clear_error(traffic: list[Event], team: str, per_day: int | None,
                                    says: str) -> None:
    with pytest.raises(TuneError, match=says.replace("(", r"\(").replace(")", r"\)")):
        propose(traffic, RULES, team=team, per_day=per_day)


def _file(tmp_path: Path, traffic_seed: int = 5) -> Path:
    p = tmp_path / "events.jsonl"
    p.write_bytes(b"".join(m.value() + b"\n"
                           for m in generate(1200, seed=traffic_seed, spread_ms=DAYS * DAY)))
    return p


def test_cli_prints_the_proposal_and_the_funnel(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["rules", "tune", "--team", "enterprise", "--capacity", "10",
                                   str(_file(tmp_path))])
    assert out.exit_code == 0, out.output
    assert "team enterprise: capacity 40 alerts over 4 working day(s) of 4" in out.output
    assert "proposed: hot " in out.output and "leads moved to mql: " in out.output
    js = CliRunner().invoke(app, ["rules", "tune", "--team", "enterprise", "--capacity", "10",
                                  "--json", str(_file(tmp_path))])
    doc = orjson.loads(js.stdout)
    assert doc["proposed"]["alerts"]["enterprise"] <= doc["capacities"][0]["total"] == 40


def test_cli_says_plainly_when_no_line_fits_and_names_bad_input(tmp_path: Path) -> None:
    events = str(_file(tmp_path))
    none = CliRunner().invoke(app, ["rules", "tune", "--team", "enterprise", "--capacity", "0",
                                    events])
    assert none.exit_code == 2
    assert "no hot line fits: the alerts no score line holds back" in none.output
    js = CliRunner().invoke(app, ["rules", "tune", "--team", "enterprise", "--capacity", "0",
                                  "--json", events])
    assert js.exit_code == 2 and orjson.loads(js.stdout)["proposed"] is None
    bad = CliRunner().invoke(app, ["rules", "tune", "--team", "nope", events])
    assert bad.exit_code == 1
    assert "error: no team 'nope' in the rules" in bad.output
    neg = CliRunner().invoke(app, ["rules", "tune", "--capacity", "-1", events])
    assert neg.exit_code == 1 and "got -1" in neg.output


@pytest.mark.integration
async def test_from_kafka_proposes_what_the_same_events_from_a_file_do(
        kafka_bootstrap: str, tmp_path: Path, producer: AIOKafkaProducer,
        traffic: list[Event]) -> None:
    import asyncio

    from tests.support.reliability import produce
    from tests.support.workers import make_isolated

    iso = await make_isolated(kafka_bootstrap, tmp_path / "home")
    await produce(producer, iso, list(generate(1200, seed=5, spread_ms=DAYS * DAY)))
    out = await asyncio.to_thread(CliRunner().invoke, app, [
        "rules", "tune", "--from-kafka", "--since", "1h", "--team", "enterprise",
        "--capacity", "10", "--json"], env=iso.env)
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    want = propose(traffic, RULES, team="enterprise", per_day=10)
    assert want.proposed is not None
    assert doc["proposed"]["lines"] == {"hot": want.proposed.lines.hot,
                                        "mql": want.proposed.lines.mql}
    assert doc["proposed"]["alerts"] == want.proposed.alerts
