"""The Metrics API: values after calls, bounded labels, the /metrics exposition."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from pipeline.core.attribution import weights
from pipeline.core.outputs import Attribution
from pipeline.core.touches import Touch
from pipeline.metrics import Metrics, bounded, metrics_handler


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(reg: CollectorRegistry) -> Metrics:
    return Metrics(reg, teams={"emea", "na"}, version="9.9.9", rules_version="1-0123456789ab")


def val(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_own_registry_no_singleton() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    ma, mb = Metrics(a), Metrics(b)  # same names twice: would raise on a shared registry
    ma.duplicate()
    assert a.get_sample_value("leadflow_duplicates_total") == 1
    assert b.get_sample_value("leadflow_duplicates_total") == 0
    assert mb.registry is b


def test_counters(m: Metrics, reg: CollectorRegistry) -> None:
    m.event_in("web", "page")
    m.event_in("web", "page")
    m.event_in("crm", "track")
    m.event_in("crm", "identify", 4)  # a batch's count at once
    m.dead_letter("bad_json")
    m.duplicate()
    m.duplicate(2)
    m.visitor_overflow(5)
    m.rebalance()
    assert val(reg, "leadflow_events_in_total", source="web", type="page") == 2
    assert val(reg, "leadflow_events_in_total", source="crm", type="track") == 1
    assert val(reg, "leadflow_events_in_total", source="crm", type="identify") == 4
    assert val(reg, "leadflow_deadletters_total", reason="bad_json") == 1
    assert val(reg, "leadflow_duplicates_total") == 3
    assert val(reg, "leadflow_visitor_overflow_total") == 5
    assert val(reg, "leadflow_rebalances_total") == 1
    assert val(reg, "leadflow_worker_info", version="9.9.9") == 1
    assert val(reg, "leadflow_rules_info", version="1-0123456789ab") == 1


def test_rules_switch_keeps_one_info_series_and_counts_ignored_rules(
        m: Metrics, reg: CollectorRegistry) -> None:
    assert val(reg, "leadflow_rules_load_failures_total", reason="invalid") == 0
    m.set_rules("1-bbbbbbbbbbbb")
    assert val(reg, "leadflow_rules_info", version="1-bbbbbbbbbbbb") == 1
    assert val(reg, "leadflow_rules_info", version="1-0123456789ab") is None
    m.rules_load_failed("invalid")
    m.rules_load_failed("behind")
    m.rules_load_failed("nonsense")
    assert val(reg, "leadflow_rules_load_failures_total", reason="invalid") == 1
    assert val(reg, "leadflow_rules_load_failures_total", reason="behind") == 1
    assert val(reg, "leadflow_rules_load_failures_total", reason="other") == 1



def test_teams_of_new_rules_are_labels_not_other(m: Metrics, reg: CollectorRegistry) -> None:
    m.alert("apac", "instant", 1.0)
    assert val(reg, "leadflow_alerts_total", team="other", kind="instant") == 1
    m.set_rules("1-cccccccccccc", ["apac", "na"])
    assert val(reg, "leadflow_alerts_total", team="apac", kind="hot_score") == 0
    m.alert("apac", "instant", 1.0)
    assert val(reg, "leadflow_alerts_total", team="apac", kind="instant") == 1
    assert val(reg, "leadflow_alerts_total", team="na", kind="instant") == 0


def test_stage_moves_applied_and_refused(m: Metrics, reg: CollectorRegistry) -> None:
    for _ in range(3):
        m.stage_move("lead", "mql")
    m.stage_move("mql", "sal")
    m.stage_move("customer", "mql", refused=True)
    assert val(reg, "leadflow_stage_moves_total", from_stage="lead", to_stage="mql") == 3
    assert val(reg, "leadflow_stage_moves_total", from_stage="mql", to_stage="sal") == 1
    assert val(reg, "leadflow_stage_moves_refused_total",
               from_stage="customer", to_stage="mql") == 1
    # A refused move is not counted as a move.
    assert val(reg, "leadflow_stage_moves_total", from_stage="customer", to_stage="mql") is None


def test_stage_moves_by_the_team_owning_the_lead(m: Metrics, reg: CollectorRegistry) -> None:
    name = "leadflow_team_stage_moves_total"
    # the funnel's moves exist at 0 for every team of the rules and for "none" before traffic
    for team in ("emea", "na", "none"):
        assert val(reg, name, from_stage="mql", to_stage="sal", team=team) == 0
        assert val(reg, name, from_stage="sql", to_stage="opportunity", team=team) == 0
    m.stage_move("lead", "mql")  # no team yet
    m.stage_move("mql", "sal", team="emea")
    m.stage_move("mql", "sal", team="emea")
    m.stage_move("sal", "sql", team="na")
    m.stage_move("mql", "sal", team="lead-42@example.com")  # not a team of the rules
    m.stage_move("sal", "sql", refused=True, team="na")
    assert val(reg, name, from_stage="lead", to_stage="mql", team="none") == 1
    assert val(reg, name, from_stage="mql", to_stage="sal", team="emea") == 2
    assert val(reg, name, from_stage="mql", to_stage="sal", team="other") == 1
    assert val(reg, name, from_stage="sal", to_stage="sql", team="na") == 1  # refusal: no move
    # the plain counter counts the same moves
    assert val(reg, "leadflow_stage_moves_total", from_stage="mql", to_stage="sal") == 3
    # teams that new rules add start at 0 too
    m.set_rules("1-cccccccccccc", ["apac"])
    assert val(reg, name, from_stage="sal", to_stage="sql", team="apac") == 0


def test_histograms_in_seconds(m: Metrics, reg: CollectorRegistry) -> None:
    m.processed(0.002)
    # a batch at once: an old event (inside the buckets, not +Inf only) and clock skew
    # (clamped to 0, never a negative observation)
    m.processed(1800.0, -1.0)
    assert val(reg, "leadflow_events_scored_total") == 3
    assert val(reg, "leadflow_processing_latency_seconds_count") == 3
    assert val(reg, "leadflow_processing_latency_seconds_sum") == pytest.approx(1800.002)
    assert val(reg, "leadflow_processing_latency_seconds_bucket", le="0.001") == 1
    assert val(reg, "leadflow_processing_latency_seconds_bucket", le="0.0025") == 2
    assert val(reg, "leadflow_processing_latency_seconds_bucket", le="1800.0") == 3

    m.alert("emea", "instant", 0.5)
    m.sla_breach("emea", "instant")
    m.speed_to_lead("emea", 240.0)
    m.speed_to_lead("emea", 7000.0)
    assert val(reg, "leadflow_alerts_total", team="emea", kind="instant") == 1
    assert val(reg, "leadflow_alert_latency_seconds_sum") == 0.5
    assert val(reg, "leadflow_sla_breaches_total", team="emea", kind="instant") == 1
    assert val(reg, "leadflow_speed_to_lead_seconds_count", team="emea") == 2
    assert val(reg, "leadflow_speed_to_lead_seconds_bucket", team="emea", le="300.0") == 1
    assert val(reg, "leadflow_speed_to_lead_seconds_bucket", team="emea", le="7200.0") == 2


def test_gauges(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_lag("events.web", 0, 12)
    assert val(reg, "leadflow_consumer_lag", topic="events.web", partition="0") == 12
    m.set_offsets("events.web", 1, highwater=100, committed=60)
    assert val(reg, "leadflow_consumer_lag", topic="events.web", partition="1") == 40
    assert val(reg, "leadflow_consumer_highwater", topic="events.web", partition="1") == 100
    assert val(reg, "leadflow_consumer_committed", topic="events.web", partition="1") == 60
    m.forget_partition("events.web", 1)
    assert val(reg, "leadflow_consumer_lag", topic="events.web", partition="1") is None
    m.forget_partition("events.web", 7)  # never set: no error

    m.set_table_keys("leads", 42)
    assert val(reg, "leadflow_table_keys", table="leads") == 42

    assert val(reg, "leadflow_recovering") == 0
    m.set_recovery("leads", 500)
    m.set_recovery("identity", 0)
    assert val(reg, "leadflow_recovery_remaining", table="leads") == 500
    assert val(reg, "leadflow_recovering") == 1
    m.set_recovery("leads", 0)
    assert val(reg, "leadflow_recovering") == 0

    # a recovery under way: restored of total, and the bulk restore's records as a counter
    m.set_recovery("identity", 300, restored=700, total=1000)
    assert val(reg, "leadflow_recovery_restored", table="identity") == 700
    assert val(reg, "leadflow_recovery_total", table="identity") == 1000
    assert val(reg, "leadflow_changelog_restored_total", table="leads") == 0
    m.restored("leads", 20000)
    m.restored("leads", 5)
    m.restored("a-table-nobody-has", 1)
    assert val(reg, "leadflow_changelog_restored_total", table="leads") == 20005
    assert val(reg, "leadflow_changelog_restored_total", table="other") == 1


def test_bounded_labels(m: Metrics, reg: CollectorRegistry) -> None:
    m.event_in("evil-source", "screen")
    m.dead_letter("whatever " * 3)
    m.stage_move("lead", "lead-123@example.com")
    m.alert("apac", "mystery", 1.0)  # apac is not a configured team
    m.sla_breach("na", "mystery")
    m.speed_to_lead("x" * 500, 1.0)
    assert val(reg, "leadflow_events_in_total", source="other", type="other") == 1
    assert val(reg, "leadflow_deadletters_total", reason="other") == 1
    assert val(reg, "leadflow_stage_moves_total", from_stage="lead", to_stage="other") == 1
    assert val(reg, "leadflow_alerts_total", team="other", kind="other") == 1
    assert val(reg, "leadflow_sla_breaches_total", team="na", kind="other") == 1
    assert val(reg, "leadflow_speed_to_lead_seconds_count", team="other") == 1


def test_bounded_function() -> None:
    assert bounded("sal", {"sal"}) == "sal"
    assert bounded("nope", {"sal"}) == "other"
    assert bounded("", None) == "other"
    assert bounded("any-team", None) == "any-team"
    assert bounded("t" * 65, None) == "other"


def test_unbounded_teams_when_not_configured(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.alert("apac", "hot_score", 2.0)
    assert val(reg, "leadflow_alerts_total", team="apac", kind="hot_score") == 1


def test_exposition(m: Metrics) -> None:
    m.stage_move("mql", "sal")
    body, ctype = m.exposition()
    text = body.decode()
    assert ctype == CONTENT_TYPE_LATEST
    assert 'leadflow_stage_moves_total{from_stage="mql",to_stage="sal"} 1.0' in text
    for name in ("leadflow_events_in_total", "leadflow_processing_latency_seconds_bucket",
                 "leadflow_consumer_lag", "leadflow_worker_info"):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text or name in text


async def test_metrics_handler_over_http(m: Metrics) -> None:
    m.event_in("web", "track")
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(m.registry))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    assert 'leadflow_events_in_total{source="web",type="track"} 1.0' in text
    assert "# TYPE leadflow_stage_moves_total counter" in text
    assert "# TYPE leadflow_speed_to_lead_seconds histogram" in text


def test_lead_rejected_counts_only_sales_rejections(m: Metrics, reg: CollectorRegistry) -> None:
    m.stage_move("mql", "recycled", cause="crm:Lead Rejected")
    m.stage_move("sal", "recycled", cause="crm:Lead Rejected")
    m.stage_move("mql", "recycled", cause="decay")  # idle time, not sales
    m.stage_move("opportunity", "recycled", cause="crm:Deal Lost")
    m.stage_move("mql", "recycled", refused=True, cause="crm:Lead Rejected")
    assert val(reg, "leadflow_leads_rejected_total", from_stage="mql") == 1
    assert val(reg, "leadflow_leads_rejected_total", from_stage="sal") == 1
    assert val(reg, "leadflow_stage_moves_total", from_stage="mql", to_stage="recycled") == 2
    assert val(reg, "leadflow_stage_moves_refused_total",
               from_stage="mql", to_stage="recycled") == 1


def test_known_series_start_at_zero(m: Metrics, reg: CollectorRegistry) -> None:
    # Present (0) before any traffic, so increase() over the first scrapes is exact.
    assert val(reg, "leadflow_stage_moves_total", from_stage="lead", to_stage="mql") == 0
    assert val(reg, "leadflow_stage_moves_total", from_stage="mql", to_stage="sal") == 0
    assert val(reg, "leadflow_events_in_total", source="web", type="track") == 0
    assert val(reg, "leadflow_deadletters_total", reason="bad_json") == 0
    assert val(reg, "leadflow_leads_rejected_total", from_stage="mql") == 0
    assert val(reg, "leadflow_alerts_total", team="emea", kind="instant") == 0
    assert val(reg, "leadflow_sla_breaches_total", team="na", kind="pql") == 0
    # Moves the stage machine never allows are not pre-created.
    assert val(reg, "leadflow_stage_moves_total", from_stage="customer", to_stage="mql") is None


def test_rejection_reasons_are_counted_within_the_rules_list(reg: CollectorRegistry) -> None:
    m = Metrics(reg, rejection_reasons=["no_budget", "bad_timing"])
    for detail in ("no_budget", "no_budget", "bad_timing", None, "my cousin's startup"):
        m.stage_move("mql", "recycled", cause="crm:Lead Rejected", detail=detail)
    m.stage_move("mql", "recycled", cause="decay", detail="no_budget")  # not a rejection
    counts = {r: val(reg, "leadflow_lead_rejection_reasons_total", reason=r)
              for r in ("no_budget", "bad_timing", "unspecified", "other")}
    assert counts == {"no_budget": 2, "bad_timing": 1, "unspecified": 1, "other": 1}


def _attribution(stage: str, channels: list[str], amount: float | None = None,
                 issue: str | None = None) -> Attribution:
    touches = tuple(Touch(c, i, f"m{i}", last_ms=i) for i, c in enumerate(channels))
    credits = tuple((model, weights(model, touches)) for model in ("linear", "last_touch"))
    return Attribution("u1", stage, "lead", 10, "r", "m", touches, credits, amount, None, issue)


def test_attribution_credit_by_channel_is_bounded(reg: CollectorRegistry) -> None:
    m = Metrics(reg, channels=["paid_search", "email"], models=["linear", "last_touch"])
    # a channel the rules no longer have (a state from older rules) counts as other
    m.attribution(_attribution("mql", ["paid_search", "email", "campaign-xyz-2026"]))
    m.attribution(_attribution("opportunity", ["paid_search", "email"], amount=1000.0))
    m.attribution(_attribution("customer", ["email"], amount=400.0))
    m.attribution(_attribution("sql", []))
    m.attribution(_attribution("customer", ["email"], issue="not_a_number"))

    def moves(stage: str, channel: str, model: str = "linear") -> float | None:
        return val(reg, "leadflow_attributed_moves_total", stage=stage, channel=channel,
                   model=model)

    assert moves("mql", "paid_search") == pytest.approx(1 / 3)
    assert moves("mql", "other") == pytest.approx(1 / 3)
    assert moves("mql", "other", "last_touch") == 1
    assert moves("sql", "unattributed") == 1
    assert moves("customer", "email") == 2
    assert val(reg, "leadflow_attributed_pipeline_total", channel="paid_search",
               model="linear") == 500
    assert val(reg, "leadflow_attributed_pipeline_total", channel="email",
               model="last_touch") == 1000
    assert val(reg, "leadflow_attributed_revenue_total", channel="email", model="linear") == 400
    assert val(reg, "leadflow_deal_amounts_ignored_total", reason="not_a_number") == 1
    # the label values are the rules' channels, other and unattributed: nothing else
    channels = {s.labels["channel"] for f in reg.collect()
                if f.name == "leadflow_attributed_moves" for s in f.samples}
    assert channels == {"paid_search", "email", "other", "unattributed"}
    # series exist at 0 before any move (rates need two samples)
    assert val(reg, "leadflow_attributed_moves_total", stage="sql", channel="email",
               model="last_touch") == 0
