"""The Grafana dashboard only queries metrics and recording rules that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "leadflow-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "recording_rules.yml"

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}
# Series Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# What the issue asked the dashboard to show.
REQUIRED = (
    "leadflow_source:events_in:rate5m",
    "leadflow_reason:deadletters:rate5m",
    "leadflow_topic:consumer_lag:sum",
    "leadflow:processing_latency_seconds:p50_rate5m",
    "leadflow:processing_latency_seconds:p99_rate5m",
    "leadflow_rebalances_total",
    "leadflow_table_keys",
    "leadflow_stage_moves_total",
    "leadflow:funnel_mql_to_sal:ratio_rate1d",
    "leadflow:funnel_sal_to_sql:ratio_rate1d",
    "leadflow:funnel_sql_to_opportunity:ratio_rate1d",
    "leadflow:acceptance:ratio_rate1d",
    "leadflow:recycle:ratio_rate1d",
    "leadflow_team:funnel_mql_to_sal:ratio_rate1d",
    "leadflow_team:funnel_sal_to_sql:ratio_rate1d",
    "leadflow_team:funnel_sql_to_opportunity:ratio_rate1d",
    "leadflow_team:alerts:increase1h",
    "leadflow_team:sla_breach:ratio_rate1h",
    "leadflow_team:speed_to_lead_seconds:p50_rate1d",
    "leadflow_team:speed_to_lead_seconds:p90_rate1d",
    "leadflow_stage_channel_model:attributed_moves:increase1d",
    "leadflow_channel_model:attributed_pipeline:increase1d",
    "leadflow_channel_model:attributed_revenue:increase1d",
    "leadflow_channel_model:funnel_mql_to_opportunity:ratio_rate1d",
    "leadflow_channel:campaign_cost:increase1d",
    "leadflow_channel_model:cac:ratio_rate1d",
)


def exported_names() -> set[str]:
    """Every series name a `Metrics` registry exposes (counters with _total, histograms'
    _bucket/_sum/_count), read from the registry rather than listed by hand."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def recorded_names() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def series_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels, durations)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations, $__rate_interval
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("("):  # a function or aggregation
            continue
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3)
        if m.group().lower() not in KEYWORDS:
            names.add(m.group())
    return names


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def all_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def test_series_parser() -> None:
    assert series_in('sum by (topic) (rate(leadflow_x_total{a="b(c)"}[$__rate_interval]))') \
        == {"leadflow_x_total"}
    assert series_in("a:b:c > 0 and on (team) up == 1 or vector(0)") == {"a:b:c", "up"}
    assert series_in("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) * 1e3") \
        == {"h_bucket"}


def test_panel_ids_unique() -> None:
    ids = [p["id"] for p in all_panels(dashboard())]
    assert len(ids) == len(set(ids)), ids


def test_no_two_panels_overlap() -> None:
    # Grafana stacks overlapping panels on top of each other: one of them cannot be read.
    boxes = [(p["title"], p["gridPos"]) for p in all_panels(dashboard())]
    clashes = [(a, b) for i, (a, g) in enumerate(boxes) for b, h in boxes[i + 1:]
               if g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"]
               and g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]]
    assert clashes == []


def test_every_query_uses_known_series() -> None:
    known = exported_names() | recorded_names() | PROMETHEUS_SERIES
    queried: set[str] = set()
    for p in all_panels(dashboard()):
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            used = series_in(t["expr"])
            assert used, f"{p['title']!r}: {t['expr']!r} selects no series"
            unknown = used - known
            assert not unknown, f"{p['title']!r} queries unknown series {sorted(unknown)}"
            queried |= used
    for name in REQUIRED:
        assert name in queried, f"dashboard does not show {name}"


def test_unknown_series_would_be_caught() -> None:
    known = exported_names() | recorded_names()
    assert "leadflow_stage_moves_total" in known
    assert "leadflow_processing_latency_seconds_bucket" in known
    assert series_in("rate(leadflow_stage_move_total[5m])") - known == {"leadflow_stage_move_total"}


def test_datasource_matches_provisioning() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in prov["datasources"]}
    for p in all_panels(dashboard()):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in uids, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] in uids, p["title"]


@pytest.mark.parametrize("rel", ["provisioning/dashboards/leadflow.yml",
                                 "provisioning/datasources/prometheus.yml"])
def test_provisioning_files_are_grafana_v1(rel: str) -> None:
    doc = yaml.safe_load((GRAFANA / rel).read_text())
    assert doc["apiVersion"] == 1
