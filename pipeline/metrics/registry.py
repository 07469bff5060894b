"""Prometheus metrics of a leadflow worker, behind one small API.

The stream worker calls `Metrics` methods (`event_in`, `stage_move`, `alert`, ...) and never
touches prometheus-client itself, so metric names, label sets and buckets live in one place
and the recording rules, alert rules and dashboard in `deploy/` can depend on them.

Conventions (https://prometheus.io/docs/practices/naming/):
- counters end in `_total`, durations are histograms in seconds (`_seconds`);
- labels are few and bounded: a value outside the known set becomes `"other"`, so a bad
  message cannot create a new time series. There is never a per-lead label.

Each `Metrics` owns the `CollectorRegistry` it was given: tests and several apps in one
process get independent registries (no module-level singleton). Only when the caller passes
no registry is prometheus-client's process-wide default used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pipeline.core.attribution import (
    AMOUNT_ISSUES,
    BAD_CAMPAIGN_COST,
    MODELS,
    UNATTRIBUTED,
    CampaignCost,
    by_channel,
)
from pipeline.core.outputs import ATTRIBUTED_STAGES, Attribution
from pipeline.core.stages import ALLOWED, STAGES
from pipeline.kafka.topics import DEFAULT_TABLES
from pipeline.models.events import REASONS

OTHER = "other"

# Bounded label values. Sources are settings (topic -> source name); these are the defaults.
DEFAULT_SOURCES: frozenset[str] = frozenset({"web", "email", "product", "crm"})
EVENT_TYPES: frozenset[str] = frozenset({"track", "page", "identify", "alias", "group"})
# Dead-letter reasons: the inbound parser's codes plus the stream shell's own.
DEADLETTER_REASONS: frozenset[str] = frozenset(REASONS) | {"empty", "internal",
                                                            BAD_CAMPAIGN_COST}
STAGE_LABELS: frozenset[str] = frozenset(STAGES)
TABLES: frozenset[str] = frozenset(DEFAULT_TABLES)
ALERT_KINDS: frozenset[str] = frozenset({"instant", "hot_score", "pql", "nurture", "recycle"})
# The cause of a CRM "Lead Rejected" move, as the core writes it in StageMove.cause_rule.
LEAD_REJECTED_CAUSE = "crm:Lead Rejected"
REJECTABLE_STAGES: tuple[str, ...] = ("mql", "pql", "sal")
UNSPECIFIED_REASON = "unspecified"  # the engine's word for a rejection without a reason
# Why a worker ignored published rules (`stream.rules_feed`).
RULES_LOAD_FAILURES: frozenset[str] = frozenset({"invalid", "behind"})
# Team names come from the rules file; without a known set they are only length-capped.
MAX_LABEL_LEN = 64
# The team label of a stage move of a lead no team owns yet.
NO_TEAM = "none"
# The stages whose moves out are counted by team (the funnel rates by team start there).
TEAM_FUNNEL_STAGES: frozenset[str] = frozenset({"mql", "sal", "sql"})

# Event time -> emitted: events can arrive late (backfills, a worker catching up on lag), so
# the buckets run from 1 ms to about an hour.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)
# Trigger event -> first sales touch: seconds (an SLA is e.g. 5 min) to a working day.
SPEED_TO_LEAD_BUCKETS: tuple[float, ...] = (
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
    7200.0, 14400.0, 28800.0, 86400.0,
)


def bounded(value: str, allowed: Iterable[str] | None) -> str:
    """`value` if it is in `allowed` (or `allowed` is None), else `"other"`.

    Also `"other"` for an empty value or one longer than MAX_LABEL_LEN: a label value is a
    time series, and unbounded values are how a metrics server runs out of memory.
    """
    if not value or len(value) > MAX_LABEL_LEN:
        return OTHER
    if allowed is not None and value not in allowed:
        return OTHER
    return value


def _version() -> str:
    try:
        return metadata.version("leadflow")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"


class Metrics:
    """The worker's metrics, registered on one `CollectorRegistry`.

    `sources` and `teams` bound those labels (unknown values become "other"); pass the
    configured source names and the teams of the rules file. `teams=None` accepts any team
    name (length-capped), since teams are few and owned by revenue operations.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        sources: Iterable[str] = DEFAULT_SOURCES,
        teams: Iterable[str] | None = None,
        rejection_reasons: Iterable[str] = (),
        channels: Iterable[str] = (OTHER,),
        models: Iterable[str] = MODELS,
        version: str | None = None,
        rules_version: str | None = None,
    ) -> None:
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self._sources = frozenset(sources)
        self._teams = None if teams is None else frozenset(teams)
        # The rules file's reasons, plus one for a rejection that gave none.
        self._reasons = frozenset([*rejection_reasons, UNSPECIFIED_REASON])
        # The rules file's channels (and `other`), plus the word for a lead without touches:
        # never a campaign string, whatever campaigns arrive.
        self._channels = frozenset([*channels, OTHER, UNATTRIBUTED])
        self._models = frozenset(models) & frozenset(MODELS)
        r = self.registry

        # -- pipeline health ------------------------------------------------------------
        self.events_in = Counter(
            "leadflow_events_in", "Inbound events accepted, by source and Segment type.",
            ["source", "type"], registry=r)
        self.deadletters = Counter(
            "leadflow_deadletters", "Messages sent to the dead-letter topic, by reason.",
            ["reason"], registry=r)
        self.duplicates = Counter(
            "leadflow_duplicates", "Events dropped as duplicates (same messageId).", registry=r)
        self.events_scored = Counter(
            "leadflow_events_scored", "Events run through the scoring core.", registry=r)
        self.offset_holes = Counter(
            "leadflow_offset_holes",
            "Times the stream consumer skipped records of a topic (read again at once).",
            ["topic"], registry=r)
        self.visitor_overflows = Counter(
            "leadflow_visitor_overflow",
            "Anonymous events dropped because a visitor's buffer was full.", registry=r)
        self.processing_latency = Histogram(
            "leadflow_processing_latency_seconds",
            "Event timestamp to its outputs being emitted.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.alert_latency = Histogram(
            "leadflow_alert_latency_seconds",
            "Triggering event produced to the alert emitted on the team's routing topic.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "leadflow_consumer_lag", "Messages behind the partition's high watermark.",
            ["topic", "partition"], registry=r)
        self.highwater = Gauge(
            "leadflow_consumer_highwater", "Partition high watermark (end offset).",
            ["topic", "partition"], registry=r)
        self.committed = Gauge(
            "leadflow_consumer_committed", "Committed offset of this worker's group.",
            ["topic", "partition"], registry=r)
        self.table_keys = Gauge(
            "leadflow_table_keys", "Keys in a table (this worker's partitions).",
            ["table"], registry=r)
        self.recovery_remaining = Gauge(
            "leadflow_recovery_remaining", "Changelog messages left to recover, by table.",
            ["table"], registry=r)
        self.recovery_restored = Gauge(
            "leadflow_recovery_restored", "Changelog records restored so far of the "
            "recovery under way (of leadflow_recovery_total), by table.", ["table"], registry=r)
        self.recovery_total = Gauge(
            "leadflow_recovery_total", "Changelog records the recovery under way restores, "
            "by table (0 when none is under way).", ["table"], registry=r)
        self.changelog_restored = Counter(
            "leadflow_changelog_restored", "Changelog records written to the stores by the "
            "bulk restore, by table (its rate is the restore's pace).", ["table"], registry=r)
        self.recovering = Gauge(
            "leadflow_recovering", "1 while any table is recovering from its changelog.",
            registry=r)
        self.rebalances = Counter(
            "leadflow_rebalances", "Consumer group rebalances seen by this worker.", registry=r)
        self.worker_info = Gauge(
            "leadflow_worker_info", "Always 1; the version label says what is running.",
            ["version"], registry=r)
        self.worker_info.labels(version=version or _version()).set(1)
        self.rules_info = Gauge(
            "leadflow_rules_info", "Always 1; the version label names the rules this worker "
            "decides with (`rules_version` on its outputs).", ["version"], registry=r)
        self._rules_version = rules_version
        if rules_version:
            self.rules_info.labels(version=rules_version).set(1)
        self.rules_load_failures = Counter(
            "leadflow_rules_load_failures",
            "Published rules this worker ignored, keeping the ones it runs: `invalid` (fails "
            "the checks of `leadflow rules check`) or `behind` (a lower revision).",
            ["reason"], registry=r)

        # -- funnel ---------------------------------------------------------------------
        self.stage_moves = Counter(
            "leadflow_stage_moves", "Lifecycle stage moves applied.",
            ["from_stage", "to_stage"], registry=r)
        self.team_stage_moves = Counter(
            "leadflow_team_stage_moves",
            "Lifecycle stage moves applied, by the team that owned the lead at the move "
            f'("{NO_TEAM}" before any team did).',
            ["from_stage", "to_stage", "team"], registry=r)
        self.campaign_costs = Counter(
            "leadflow_campaign_cost",
            'Campaign costs reported by "Campaign Cost" events, by channel (amounts as given, '
            "not converted between currencies).",
            ["channel"], registry=r)
        self.stage_moves_refused = Counter(
            "leadflow_stage_moves_refused",
            "Stage moves asked for and refused by the stage machine.",
            ["from_stage", "to_stage"], registry=r)
        self.leads_rejected = Counter(
            "leadflow_leads_rejected",
            'Leads sales rejected ("Lead Rejected" moves to recycled), by the stage left.',
            ["from_stage"], registry=r)
        self.rejection_reasons = Counter(
            "leadflow_lead_rejection_reasons",
            'Reasons sales gave with "Lead Rejected" (the rules file\'s list; "other" for any '
            'other text, "unspecified" for none).', ["reason"], registry=r)
        self.alerts = Counter(
            "leadflow_alerts", "Alerts emitted to a team's routing topic.",
            ["team", "kind"], registry=r)
        self.sla_breaches = Counter(
            "leadflow_sla_breaches", "Alerts not acknowledged within their SLA (escalated).",
            ["team", "kind"], registry=r)
        self.speed_to_lead_s = Histogram(
            "leadflow_speed_to_lead_seconds",
            "Triggering event to the first sales touch, by team.",
            ["team"], buckets=SPEED_TO_LEAD_BUCKETS, registry=r)

        # -- attribution ------------------------------------------------------------------
        self.attributed_moves = Counter(
            "leadflow_attributed_moves",
            "Moves to mql, sql, opportunity and customer credited to channels: each move adds "
            "its weights (summing to 1) per attribution model.",
            ["stage", "channel", "model"], registry=r)
        self.attributed_pipeline = Counter(
            "leadflow_attributed_pipeline",
            'Deal amounts of "Opportunity Created", credited to channels per model.',
            ["channel", "model"], registry=r)
        self.attributed_revenue = Counter(
            "leadflow_attributed_revenue",
            'Deal amounts of "Deal Won", credited to channels per model.',
            ["channel", "model"], registry=r)
        self.deal_amounts_ignored = Counter(
            "leadflow_deal_amounts_ignored",
            "Deal amounts given but not used, by why (the move is still attributed).",
            ["reason"], registry=r)

        # Per-table remaining counts, so `recovering` is "any table still has work".
        self._remaining: dict[str, int] = {}
        self._init_series()

    def _init_series(self) -> None:
        """Create the known label combinations at 0.

        `increase()` and `rate()` need two samples of a series: a counter that appears with
        its first value already 10 would lose those 10 from every funnel ratio. Starting at
        0 on the first scrape also keeps ratios defined (0, not "no data") before traffic.
        """
        for reason in RULES_LOAD_FAILURES:
            self.rules_load_failures.labels(reason=reason)
        for source in self._sources:
            for type_ in EVENT_TYPES:
                self.events_in.labels(source=source, type=type_)
        for reason in DEADLETTER_REASONS:
            self.deadletters.labels(reason=reason)
        for from_stage, to_stage in ALLOWED:
            self.stage_moves.labels(from_stage=from_stage, to_stage=to_stage)
        self._init_team_moves([*(self._teams or ()), NO_TEAM])
        for stage in REJECTABLE_STAGES:
            self.leads_rejected.labels(from_stage=stage)
        for table in TABLES:
            self.changelog_restored.labels(table=table)
        for reason in self._reasons | {"other"}:
            self.rejection_reasons.labels(reason=reason)
        for model in self._models:
            for channel in self._channels:
                for stage in ATTRIBUTED_STAGES:
                    self.attributed_moves.labels(stage=stage, channel=channel, model=model)
                self.attributed_pipeline.labels(channel=channel, model=model)
                self.attributed_revenue.labels(channel=channel, model=model)
        for channel in self._channels:
            self.campaign_costs.labels(channel=channel)
        for issue in AMOUNT_ISSUES:
            self.deal_amounts_ignored.labels(reason=issue)
        for team in self._teams or ():
            for kind in ALERT_KINDS:
                self.alerts.labels(team=team, kind=kind)
                self.sla_breaches.labels(team=team, kind=kind)

    def _init_team_moves(self, teams: Iterable[str]) -> None:
        for from_stage, to_stage in ALLOWED:
            if from_stage in TEAM_FUNNEL_STAGES:
                for team in teams:
                    self.team_stage_moves.labels(
                        from_stage=from_stage, to_stage=to_stage, team=team)

    # -- label bounding ---------------------------------------------------------------------
    def _team(self, team: str) -> str:
        return bounded(team, self._teams)

    @staticmethod
    def _stage(stage: str) -> str:
        return bounded(stage, STAGE_LABELS)

    # -- calls for the worker ---------------------------------------------------------------
    def event_in(self, source: str, type: str, n: int = 1) -> None:
        """`n` inbound events accepted from `source` (web/email/...) of Segment `type`."""
        self.events_in.labels(
            source=bounded(source, self._sources), type=bounded(type, EVENT_TYPES)).inc(n)

    def dead_letter(self, reason: str) -> None:
        """One message sent to the dead-letter topic with reason code `reason`."""
        self.deadletters.labels(reason=bounded(reason, DEADLETTER_REASONS)).inc()

    def duplicate(self, n: int = 1) -> None:
        """`n` events dropped as duplicates."""
        self.duplicates.inc(n)

    def offset_hole(self, topic: str) -> None:
        """The consumer skipped records of `topic`; they are read again."""
        self.offset_holes.labels(topic=topic).inc()

    def visitor_overflow(self, n: int = 1) -> None:
        """`n` anonymous events dropped because the visitor buffer was full."""
        self.visitor_overflows.inc(n)

    def processed(self, *latencies_s: float) -> None:
        """Events scored and their outputs emitted, each `latency_s` after its event time."""
        self.events_scored.inc(len(latencies_s))
        observe = self.processing_latency.observe
        for latency in latencies_s:
            observe(max(0.0, latency))

    def stage_move(
        self, from_stage: str, to_stage: str, refused: bool = False, cause: str | None = None,
        detail: str | None = None, team: str | None = None,
    ) -> None:
        """A lead moved (or was refused a move) from `from_stage` to `to_stage`.

        `cause` is the move's `cause_rule` (e.g. "crm:Lead Rejected", "decay"); it is not a
        label (rule ids are unbounded) but tells a sales rejection from an idle-time recycle,
        which the acceptance rate needs. `detail` is the reason sales gave with a rejection.
        `team` is the team owning the lead (None: no team yet), bounded by the rules' teams.
        """
        frm, to = self._stage(from_stage), self._stage(to_stage)
        if refused:
            self.stage_moves_refused.labels(from_stage=frm, to_stage=to).inc()
            return
        self.stage_moves.labels(from_stage=frm, to_stage=to).inc()
        self.team_stage_moves.labels(
            from_stage=frm, to_stage=to,
            team=NO_TEAM if team is None else self._team(team)).inc()
        if cause == LEAD_REJECTED_CAUSE and to == "recycled":
            self.leads_rejected.labels(from_stage=frm).inc()
            reason = bounded(detail or UNSPECIFIED_REASON, self._reasons)
            self.rejection_reasons.labels(reason=reason).inc()

    def attribution(self, a: Attribution) -> None:
        """A move to an attributed stage: its credit per channel and model, and the deal."""
        stage = bounded(a.stage, ATTRIBUTED_STAGES)
        amount = a.amount
        money = (self.attributed_pipeline if stage == "opportunity" else
                 self.attributed_revenue if stage == "customer" else None)
        for model, ws in a.credits:
            if model not in self._models:
                continue
            for channel, w in by_channel(a.touches, ws).items():
                ch = bounded(channel, self._channels)
                self.attributed_moves.labels(stage=stage, channel=ch, model=model).inc(w)
                if money is not None and amount:
                    money.labels(channel=ch, model=model).inc(w * amount)
        if a.amount_issue is not None:
            self.deal_amounts_ignored.labels(reason=bounded(a.amount_issue, AMOUNT_ISSUES)).inc()

    def alert(self, team: str, kind: str, latency_s: float) -> None:
        """An alert of `kind` emitted to `team`, `latency_s` after its triggering event."""
        self.alerts.labels(team=self._team(team), kind=bounded(kind, ALERT_KINDS)).inc()
        self.alert_latency.observe(max(0.0, latency_s))

    def sla_breach(self, team: str, kind: str) -> None:
        """An alert of `kind` for `team` was not acknowledged within its SLA."""
        self.sla_breaches.labels(team=self._team(team), kind=bounded(kind, ALERT_KINDS)).inc()

    def speed_to_lead(self, team: str, seconds: float) -> None:
        """`team`'s first sales touch came `seconds` after the triggering event."""
        self.speed_to_lead_s.labels(team=self._team(team)).observe(max(0.0, seconds))

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Consumer lag of one assigned partition (messages)."""
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, lag))

    def set_offsets(self, topic: str, partition: int, highwater: int, committed: int) -> None:
        """High watermark and committed offset of a partition; also sets the lag from them."""
        labels = {"topic": topic, "partition": str(partition)}
        self.highwater.labels(**labels).set(highwater)
        self.committed.labels(**labels).set(committed)
        self.set_lag(topic, partition, highwater - committed)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a partition's gauges after it was revoked, so no stale lag is reported."""
        for gauge in (self.consumer_lag, self.highwater, self.committed):
            # KeyError: the partition was never set on this worker.
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))

    def set_table_keys(self, table: str, n: int) -> None:
        """Number of keys in `table` on this worker."""
        self.table_keys.labels(table=table).set(n)

    def set_recovery(self, table: str, remaining: int, restored: int = 0,
                     total: int = 0) -> None:
        """Changelog messages `table` still has to recover (0 when done), and of the
        recovery's `total`, how many are `restored`."""
        remaining = max(0, remaining)
        self.recovery_remaining.labels(table=table).set(remaining)
        self.recovery_restored.labels(table=table).set(max(0, restored))
        self.recovery_total.labels(table=table).set(max(0, total))
        self._remaining[table] = remaining
        self.recovering.set(1 if any(self._remaining.values()) else 0)

    def campaign_cost(self, cost: CampaignCost) -> None:
        """A campaign's cost, on its channel (a channel outside the rules file's: `other`)."""
        self.campaign_costs.labels(channel=bounded(cost.channel, self._channels)).inc(cost.amount)

    def set_rules(self, version: str, teams: Iterable[str] = ()) -> None:
        """The worker decides with other rules now: one `leadflow_rules_info` series, and
        the teams those rules add become label values (at 0) instead of "other"."""
        if self._rules_version and self._rules_version != version:
            with contextlib.suppress(KeyError):
                self.rules_info.remove(self._rules_version)
        self._rules_version = version
        self.rules_info.labels(version=version).set(1)
        if self._teams is not None:
            for team in set(teams) - self._teams:
                for kind in ALERT_KINDS:
                    self.alerts.labels(team=team, kind=kind)
                    self.sla_breaches.labels(team=team, kind=kind)
            self._init_team_moves(set(teams) - self._teams)
            self._teams = self._teams | frozenset(teams)

    def rules_load_failed(self, reason: str) -> None:
        """Published rules were ignored (`RULES_LOAD_FAILURES`)."""
        self.rules_load_failures.labels(reason=bounded(reason, RULES_LOAD_FAILURES)).inc()
    def restored(self, table: str, n: int) -> None:
        """`n` changelog records of `table` written to its store by the bulk restore."""
        self.changelog_restored.labels(table=bounded(table, TABLES)).inc(n)

    def rebalance(self) -> None:
        """The consumer group rebalanced."""
        self.rebalances.inc()

    # -- exposition -------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format and its Content-Type header value."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


Handler = Callable[[web.Request], Awaitable[web.Response]]


def metrics_handler(registry: CollectorRegistry | None = None) -> Handler:
    """An aiohttp handler serving `registry` (default: the process-wide one) as /metrics.

    The Content-Type is passed as a header rather than `content_type=`: aiohttp refuses a
    `content_type` with parameters, and Prometheus reads the format version from them.
    """
    reg = REGISTRY if registry is None else registry

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(reg),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
