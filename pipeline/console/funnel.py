"""The funnel KPIs of the recording rules (deploy/prometheus/recording_rules.yml): read from
Prometheus (the recorded series, over their windows), or computed from the workers'
`/metrics` text (the same ratios over the counters since the workers started, summed over
every worker) when no Prometheus is configured."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import LeadflowError
from pipeline.metrics.registry import NO_TEAM

QUALIFIED = ("mql", "pql")


class MetricsUnreadable(LeadflowError):
    """A worker's /metrics text is not Prometheus exposition format."""


#: (key, label, recorded series) of each conversion KPI, in the funnel's order.
RATIOS = (
    ("mql_to_sal", "MQL → SAL", "leadflow:funnel_mql_to_sal:ratio_rate1d"),
    ("sal_to_sql", "SAL → SQL", "leadflow:funnel_sal_to_sql:ratio_rate1d"),
    ("sql_to_opportunity", "SQL → opportunity", "leadflow:funnel_sql_to_opportunity:ratio_rate1d"),
    ("acceptance", "Acceptance", "leadflow:acceptance:ratio_rate1d"),
    ("recycle", "Recycle rate", "leadflow:recycle:ratio_rate1d"),
)
#: (key, label, from stage, to stage, recorded series) of each conversion KPI by team: the
#: share of a team's moves out of the stage that went to the next.
TEAM_RATIOS = (
    ("mql_to_sal", "MQL → SAL", "mql", "sal", "leadflow_team:funnel_mql_to_sal:ratio_rate1d"),
    ("sal_to_sql", "SAL → SQL", "sal", "sql", "leadflow_team:funnel_sal_to_sql:ratio_rate1d"),
    ("sql_to_opportunity", "SQL → opportunity", "sql", "opportunity",
     "leadflow_team:funnel_sql_to_opportunity:ratio_rate1d"),
)
#: The recorded series of the routing KPIs, by team.
TEAM_SERIES = {
    "alerts": "leadflow_team:alerts:increase1h",
    "breach_ratio": "leadflow_team:sla_breach:ratio_rate1h",
    "p50_s": "leadflow_team:speed_to_lead_seconds:p50_rate1d",
    "p90_s": "leadflow_team:speed_to_lead_seconds:p90_rate1d",
    **{key: series for key, _, _, _, series in TEAM_RATIOS},
}


@dataclass(frozen=True, slots=True)
class Ratio:
    """One conversion KPI (None: no denominator). Counted from /metrics, the numerator and
    denominator come with it; read from Prometheus, only the recorded ratio."""

    key: str
    label: str
    value: float | None
    numerator: float | None = None
    denominator: float | None = None

    @classmethod
    def of(cls, key: str, label: str, numerator: float, denominator: float) -> Ratio:
        value = numerator / denominator if denominator > 0 else None
        return cls(key, label, value, numerator, denominator)


@dataclass(frozen=True, slots=True)
class TeamRouting:
    """A team's alerts, the share that breached their SLA, speed-to-lead quantiles
    (seconds; None: no first touch yet). `breaches` is None when only the ratio is known.
    `conversion` is one `Ratio` per `TEAM_RATIOS`, over the moves of the team's leads."""

    team: str
    alerts: float
    breach_ratio: float | None
    p50_s: float | None
    p90_s: float | None
    breaches: float | None = None
    conversion: tuple[Ratio, ...] = ()


@dataclass(frozen=True, slots=True)
class Funnel:
    """Every KPI the console charts, and where they come from (said on the page)."""

    ratios: tuple[Ratio, ...]
    teams: tuple[TeamRouting, ...]
    source: str

    def ratio(self, key: str) -> Ratio:
        return next(r for r in self.ratios if r.key == key)


@dataclass(frozen=True, slots=True)
class _Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


def _samples(texts: Iterable[str]) -> list[_Sample]:
    out: list[_Sample] = []
    for i, text in enumerate(texts):
        try:
            for family in text_string_to_metric_families(text):
                out.extend(_Sample(s.name, tuple(sorted(s.labels.items())), float(s.value))
                           for s in family.samples)
        except (ValueError, TypeError, IndexError) as exc:
            raise MetricsUnreadable(f"worker {i + 1}'s /metrics is not Prometheus text: "
                                    f"{exc}") from None
    return out


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets: linear
    inside the bucket that holds the rank; the highest finite bound for the +Inf bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def funnel(metrics_texts: list[str], teams: Iterable[str] | None = None) -> Funnel:
    """The KPIs from the `/metrics` text of every worker (counters summed over workers);
    routing KPIs for `teams` only when given (the counters also label nurture, recycle...)."""
    samples = _samples(metrics_texts)

    def total(name: str, pred: Callable[[_Sample], bool] | None = None) -> float:
        return sum(s.value for s in samples if s.name == name and (pred is None or pred(s)))

    def moves(from_stage: Iterable[str] | None, to_stage: Iterable[str]) -> float:
        froms = None if from_stage is None else frozenset(from_stage)
        tos = frozenset(to_stage)
        return total("leadflow_stage_moves_total",
                     lambda s: s.label("to_stage") in tos
                     and (froms is None or s.label("from_stage") in froms))

    accepted = moves(QUALIFIED, ["sal"])
    rejected = total("leadflow_leads_rejected_total")
    counted = {
        "mql_to_sal": (moves(["mql"], ["sal"]), moves(None, ["mql"])),
        "sal_to_sql": (moves(["sal"], ["sql"]), moves(None, ["sal"])),
        "sql_to_opportunity": (moves(["sql"], ["opportunity"]), moves(None, ["sql"])),
        "acceptance": (accepted, accepted + rejected),
        "recycle": (moves(None, ["recycled"]), moves(None, QUALIFIED)),
    }
    ratios = tuple(Ratio.of(key, label, *counted[key]) for key, label, _ in RATIOS)
    keep = None if teams is None else frozenset(teams)
    alerts: dict[str, float] = defaultdict(float)
    breaches: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    # team -> (from stage, to stage) -> moves
    team_moves: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for s in samples:
        team = s.label("team")
        if s.name == "leadflow_team_stage_moves_total":
            team_moves[team][(s.label("from_stage"), s.label("to_stage"))] += s.value
        elif s.name == "leadflow_alerts_total":
            alerts[team] += s.value
        elif s.name == "leadflow_sla_breaches_total":
            breaches[team] += s.value
        elif s.name == "leadflow_speed_to_lead_seconds_bucket":
            buckets[team][float(s.label("le"))] += s.value

    def conversion(team: str) -> tuple[Ratio, ...]:
        moved = team_moves[team]
        return tuple(
            Ratio.of(key, label, moved[(frm, to)],
                     sum(n for (f, _), n in moved.items() if f == frm))
            for key, label, frm, to, _ in TEAM_RATIOS)

    routing = tuple(
        TeamRouting(team, alerts[team],
                    breaches[team] / alerts[team] if alerts[team] > 0 else None,
                    histogram_quantile(0.5, buckets[team].items()),
                    histogram_quantile(0.9, buckets[team].items()), breaches[team],
                    conversion(team))
        for team in sorted(set(alerts) | set(breaches) | set(buckets) | set(team_moves))
        if team and team != NO_TEAM and (keep is None or team in keep))
    n = len(metrics_texts)
    return Funnel(ratios, routing, f"counted since the workers started (summed over {n} "
                                   f"worker{'s' if n != 1 else ''})")


Vector = list[tuple[dict[str, str], float]]


def funnel_from_prometheus(results: dict[str, Vector], teams: Iterable[str] | None = None,
                           *, window: str = "the recording rules' windows") -> Funnel:
    """The KPIs from instant queries of the recorded series (`RATIOS`, `TEAM_SERIES`):
    series name -> [(labels, value)]. A series with no sample (no denominator) is None."""

    def one(series: str) -> float | None:
        values = [v for _, v in results.get(series, []) if not math.isnan(v)]
        return values[0] if values else None

    ratios = tuple(Ratio(key, label, one(series)) for key, label, series in RATIOS)
    by_team: dict[str, dict[str, float]] = defaultdict(dict)
    for field, series in TEAM_SERIES.items():
        for labels, v in results.get(series, []):
            if labels.get("team") and not math.isnan(v):
                by_team[labels["team"]][field] = v
    keep = None if teams is None else frozenset(teams)
    routing = tuple(
        TeamRouting(team, f.get("alerts", 0.0), f.get("breach_ratio"), f.get("p50_s"),
                    f.get("p90_s"), conversion=tuple(
                        Ratio(key, label, f.get(key)) for key, label, _, _, _ in TEAM_RATIOS))
        for team, f in sorted(by_team.items()) if keep is None or team in keep)
    return Funnel(ratios, routing, f"from Prometheus, over {window}")
