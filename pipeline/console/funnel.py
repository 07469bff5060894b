"""The funnel KPIs of the recording rules (deploy/prometheus/recording_rules.yml), computed
from workers' `/metrics` text: the same ratios over the counters since the workers started,
summed over every worker, instead of over a Prometheus window."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import LeadflowError

QUALIFIED = ("mql", "pql")


class MetricsUnreadable(LeadflowError):
    """A worker's /metrics text is not Prometheus exposition format."""


@dataclass(frozen=True, slots=True)
class Ratio:
    """One conversion KPI: numerator over denominator (None while the denominator is 0)."""

    key: str
    label: str
    numerator: float
    denominator: float

    @property
    def value(self) -> float | None:
        return self.numerator / self.denominator if self.denominator > 0 else None


@dataclass(frozen=True, slots=True)
class TeamRouting:
    """A team's alerts, SLA breaches and speed-to-lead quantiles (seconds; None: no touch)."""

    team: str
    alerts: float
    breaches: float
    touches: float
    p50_s: float | None
    p90_s: float | None

    @property
    def breach_ratio(self) -> float | None:
        return self.breaches / self.alerts if self.alerts > 0 else None


@dataclass(frozen=True, slots=True)
class Funnel:
    """Every KPI the console charts."""

    ratios: tuple[Ratio, ...]
    teams: tuple[TeamRouting, ...]
    workers: int

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
    ratios = (
        Ratio("mql_to_sal", "MQL → SAL", moves(["mql"], ["sal"]), moves(None, ["mql"])),
        Ratio("sal_to_sql", "SAL → SQL", moves(["sal"], ["sql"]), moves(None, ["sal"])),
        Ratio("sql_to_opportunity", "SQL → opportunity", moves(["sql"], ["opportunity"]),
              moves(None, ["sql"])),
        Ratio("acceptance", "Acceptance", accepted, accepted + rejected),
        Ratio("recycle", "Recycle rate", moves(None, ["recycled"]), moves(None, QUALIFIED)),
    )
    keep = None if teams is None else frozenset(teams)
    alerts: dict[str, float] = defaultdict(float)
    breaches: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for s in samples:
        team = s.label("team")
        if s.name == "leadflow_alerts_total":
            alerts[team] += s.value
        elif s.name == "leadflow_sla_breaches_total":
            breaches[team] += s.value
        elif s.name == "leadflow_speed_to_lead_seconds_bucket":
            buckets[team][float(s.label("le"))] += s.value
    routing = tuple(
        TeamRouting(team, alerts[team], breaches[team],
                    max(buckets[team].values(), default=0.0),
                    histogram_quantile(0.5, buckets[team].items()),
                    histogram_quantile(0.9, buckets[team].items()))
        for team in sorted(set(alerts) | set(breaches) | set(buckets))
        if team and (keep is None or team in keep))
    return Funnel(ratios, routing, len(metrics_texts))
