"""The funnel KPIs from /metrics text: the recording rules' ratios, summed over workers."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from pipeline.console.funnel import (
    RATIOS,
    TEAM_SERIES,
    MetricsUnreadable,
    funnel,
    funnel_from_prometheus,
    histogram_quantile,
)
from pipeline.metrics.registry import Metrics


def worker_text(moves: dict[tuple[str, str], int], *, rejected: int = 0,
                alerts: dict[str, int] | None = None, breaches: dict[str, int] | None = None,
                touches: dict[str, list[float]] | None = None,
                team_moves: dict[tuple[str, str, str | None], int] | None = None) -> str:
    """The /metrics text of a worker's real registry after these counts."""
    m = Metrics(registry=CollectorRegistry(), sources=["web"], teams=["sales", "emea"])
    for (a, b), n in moves.items():
        m.stage_moves.labels(from_stage=a, to_stage=b).inc(n)
    for (a, b, team), n in (team_moves or {}).items():
        for _ in range(n):
            m.stage_move(a, b, team=team)
    if rejected:
        m.leads_rejected.labels(from_stage="mql").inc(rejected)
    for team, n in (alerts or {}).items():
        m.alerts.labels(team=team, kind="instant").inc(n)
    for team, n in (breaches or {}).items():
        m.sla_breaches.labels(team=team, kind="instant").inc(n)
    for team, secs in (touches or {}).items():
        for s in secs:
            m.speed_to_lead_s.labels(team=team).observe(s)
    body, _ = m.exposition()
    return body.decode()


def test_ratios_follow_the_recording_rules_summed_over_workers() -> None:
    w1 = worker_text({("lead", "mql"): 6, ("mql", "sal"): 2, ("sal", "sql"): 1,
                      ("mql", "recycled"): 1}, rejected=1)
    w2 = worker_text({("lead", "mql"): 2, ("pql", "sal"): 1, ("sql", "opportunity"): 1,
                      ("lead", "pql"): 2, ("sal", "recycled"): 1}, rejected=1)
    f = funnel([w1, w2])
    assert f.source == "counted since the workers started (summed over 2 workers)"
    got = {r.key: (r.numerator, r.denominator) for r in f.ratios}
    assert got == {
        "mql_to_sal": (2, 8),  # mql->sal over moves into mql
        "sal_to_sql": (1, 3),  # into sal: mql->sal 2 + pql->sal 1
        "sql_to_opportunity": (1, 1),
        "acceptance": (3, 5),  # accepted (mql|pql -> sal) over accepted + rejected
        "recycle": (2, 10),  # into recycled over into mql|pql
    }
    assert f.ratio("mql_to_sal").value == 0.25


def test_no_denominator_gives_no_value() -> None:
    f = funnel([worker_text({})])
    assert all(r.value is None for r in f.ratios)
    assert {t.team: t.breach_ratio for t in f.teams} == {"sales": None, "emea": None}


def test_sla_breaches_and_speed_to_lead_by_team() -> None:
    f = funnel([worker_text({}, alerts={"sales": 4, "emea": 1}, breaches={"sales": 1},
                            touches={"sales": [30.0, 30.0, 200.0, 200.0]})])
    teams = {t.team: t for t in f.teams}
    assert teams["sales"].breach_ratio == 0.25 and teams["emea"].breach_ratio == 0.0
    assert teams["sales"].breaches == 1
    assert teams["sales"].p50_s is not None and teams["sales"].p90_s is not None
    assert teams["sales"].p50_s <= 60 < teams["sales"].p90_s  # the quantiles' buckets
    assert teams["emea"].p50_s is None
    assert [t.team for t in funnel([worker_text({})], teams=["emea"]).teams] == ["emea"]


def test_conversion_by_team_divides_by_the_moves_out_of_the_stage() -> None:
    w1 = worker_text({}, team_moves={("mql", "sal", "sales"): 3, ("mql", "recycled", "sales"): 1,
                                     ("sal", "sql", "sales"): 1, ("mql", "sal", None): 5,
                                     ("lead", "mql", None): 9})
    w2 = worker_text({}, team_moves={("mql", "recycled", "sales"): 2, ("sal", "sql", "emea"): 2,
                                     ("sal", "recycled", "emea"): 2})
    f = funnel([w1, w2])
    got = {t.team: [(r.key, r.numerator, r.denominator) for r in t.conversion]
           for t in f.teams}
    # "none" (moves before a team owned the lead) is no team of the page
    assert got == {
        "emea": [("mql_to_sal", 0, 0), ("sal_to_sql", 2, 4), ("sql_to_opportunity", 0, 0)],
        "sales": [("mql_to_sal", 3, 6), ("sal_to_sql", 1, 1), ("sql_to_opportunity", 0, 0)],
    }
    [sales] = [t for t in f.teams if t.team == "sales"]
    assert [r.value for r in sales.conversion] == [0.5, 1.0, None]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(1.0, 0.0), (2.0, 10.0), (4.0, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.5, buckets) == 2.0
    assert histogram_quantile(0.75, buckets) == 3.0
    assert histogram_quantile(0.25, buckets) == 1.5
    assert histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0  # in +Inf
    assert histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None


def test_unreadable_text_names_the_worker() -> None:
    with pytest.raises(MetricsUnreadable, match="worker 2's /metrics"):
        funnel([worker_text({}), 'x{a="1" 1\n'])


def test_from_prometheus_reads_the_recorded_series() -> None:
    series = {s: k for k, _, s in RATIOS}
    results = {s: [({}, 0.1 * (n + 1))] for n, s in enumerate(series) if series[s] != "recycle"}
    results[TEAM_SERIES["alerts"]] = [({"team": "sales"}, 8.0), ({"team": "nurture"}, 3.0)]
    results[TEAM_SERIES["breach_ratio"]] = [({"team": "sales"}, 0.25)]
    results[TEAM_SERIES["p50_s"]] = [({"team": "sales"}, 42.0)]
    results[TEAM_SERIES["p90_s"]] = [({"team": "sales"}, float("nan"))]  # too few to say
    results[TEAM_SERIES["mql_to_sal"]] = [({"team": "sales"}, 0.75)]
    results[TEAM_SERIES["sal_to_sql"]] = [({"team": "sales"}, 0.5)]
    f = funnel_from_prometheus(results, ["sales", "emea"])
    assert [(r.key, r.value) for r in f.ratios] == [
        ("mql_to_sal", 0.1), ("sal_to_sql", 0.2), ("sql_to_opportunity", 0.30000000000000004),
        ("acceptance", 0.4), ("recycle", None)]  # no sample: no denominator
    assert all(r.numerator is None for r in f.ratios)
    (sales,) = f.teams  # nurture is no team of the rules; emea has no series yet
    assert (sales.team, sales.alerts, sales.breach_ratio, sales.p50_s, sales.p90_s) == \
        ("sales", 8.0, 0.25, 42.0, None)
    assert [(r.key, r.value) for r in sales.conversion] == [
        ("mql_to_sal", 0.75), ("sal_to_sql", 0.5), ("sql_to_opportunity", None)]
    assert f.source.startswith("from Prometheus")
