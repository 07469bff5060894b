"""Prometheus config, recording and alert rules: promtool checks them and runs their tests.

CI installs promtool (`apt-get install prometheus`, see .ci/test); where it is absent these
tests are skipped with that reason (shown by -ra), not failed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
RULE_FILES = [PROM / "recording_rules.yml", PROM / "alert_rules.yml"]
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install it with `apt-get install prometheus` "
                    "(Debian/Ubuntu package `prometheus` ships /usr/bin/promtool)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)


def test_check_rules() -> None:
    res = run("check", "rules", *RULE_FILES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 28 rules found" in res.stdout + res.stderr


def test_check_config() -> None:
    res = run("check", "config", PROM / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_check_cluster_config() -> None:
    """deploy/compose/cluster.yml's config: DNS discovery of the scaled workers, same rules."""
    res = run("check", "config", PROM / "prometheus-cluster.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_pass() -> None:
    assert len(TEST_FILES) >= 2
    res = run("test", "rules", *TEST_FILES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED" not in res.stdout + res.stderr


def _alerts() -> list[dict[str, object]]:
    doc = yaml.safe_load((PROM / "alert_rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_annotations_and_a_runbook_section() -> None:
    runbook = (PROM / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^## (.+)$", runbook, flags=re.M)}
    alerts = _alerts()
    assert len(alerts) >= 5
    for rule in alerts:
        ann = rule["annotations"]
        assert isinstance(ann, dict)
        assert {"summary", "description", "runbook"} <= set(ann), rule["alert"]
        path, _, anchor = str(ann["runbook"]).partition("#")
        assert path == "deploy/prometheus/RUNBOOK.md"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in RUNBOOK.md"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for f in TEST_FILES:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                bucket = fired if t.get("exp_alerts") else quiet
                bucket[t["alertname"]] = bucket.get(t["alertname"], 0) + 1
    for rule in _alerts():
        name = str(rule["alert"])
        assert fired.get(name), f"{name} is never tested firing"
        assert quiet.get(name), f"{name} is never tested not firing"


def test_every_recording_rule_is_tested() -> None:
    doc = yaml.safe_load((PROM / "recording_rules.yml").read_text())
    records = {r["record"] for g in doc["groups"] for r in g["rules"]}
    tested = {
        re.split(r"[{\s]", t["expr"].strip())[0]
        for f in TEST_FILES
        for case in yaml.safe_load(f.read_text())["tests"]
        for t in case.get("promql_expr_test", [])
    }
    # Quantiles of latency histograms are plain histogram_quantile: tested via speed-to-lead.
    untested = records - tested - {
        "leadflow_reason:deadletters:rate5m",
        "leadflow:processing_latency_seconds:p50_rate5m",
        "leadflow:processing_latency_seconds:p99_rate5m",
        "leadflow:alert_latency_seconds:p99_rate5m",
        "leadflow_team_kind:alerts:increase1d",
    }
    assert not untested, f"recording rules without a promtool test: {sorted(untested)}"
