"""The rules feed's decisions: switch to a newer good version, ignore broken or older ones."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from pipeline.core.rules import parse_rules
from pipeline.metrics.registry import Metrics
from pipeline.published_rules import Broken
from pipeline.stream.rules_feed import RulesFeed
from tests.support.published import record, revised

TOPIC = "leadflow.rules"


def feed(revision: int = 1) -> tuple[RulesFeed, CollectorRegistry]:
    reg = CollectorRegistry()
    start = parse_rules(revised(revision))
    m = Metrics(reg, rules_version=start.version)
    return RulesFeed(start, origin="rules.yaml", topic=TOPIC, metrics=m), reg


def info(reg: CollectorRegistry) -> list[str]:
    return [s.labels["version"] for metric in reg.collect() if metric.name == "leadflow_rules_info"
            for s in metric.samples]


def test_a_newer_revision_is_taken_and_named_everywhere() -> None:
    f, reg = feed(1)
    newer = record(2, offset=5, mql=55)
    assert f.offer(newer) is True
    assert f.current() is newer.rules
    assert info(reg) == [newer.rules.version]
    st = f.status()
    assert (st["version"], st["revision"], st["origin"], st["load_failures"]) == (
        newer.rules.version, 2, "leadflow.rules[0]@5", 0)
    assert f.offer(record(2, offset=6, mql=55)) is False  # the same rules again


def test_a_broken_record_is_ignored_loudly_and_the_old_rules_stay(
        caplog: pytest.LogCaptureFixture) -> None:
    f, reg = feed(1)
    before = f.current()
    with caplog.at_level(logging.ERROR):
        assert f.offer(Broken(7, ("leadflow.rules[0]@7 (r.yaml):12 thresholds.hot: bad",))) is False
    assert f.current() is before
    assert info(reg) == [before.version]
    assert reg.get_sample_value("leadflow_rules_load_failures_total", {"reason": "invalid"}) == 1
    st = f.status()
    assert st["load_failures"] == 1
    assert st["last_failure"] == {
        "record": "leadflow.rules[0]@7", "reason": "invalid", "revision": None,
        "problems": ["leadflow.rules[0]@7 (r.yaml):12 thresholds.hot: bad"]}
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "leadflow.rules[0]@7 NOT LOADED (invalid)" in line
    assert f"still deciding with rules version {before.version}" in line
    assert "thresholds.hot: bad" in line


def test_an_older_revision_is_never_taken() -> None:
    f, reg = feed(3)
    f.caught_up()  # published after the worker read the topic: a failure to say
    before = f.current()
    assert f.offer(record(2, offset=1, mql=55)) is False
    assert f.current() is before
    assert reg.get_sample_value("leadflow_rules_load_failures_total", {"reason": "behind"}) == 1
    last = f.status()["last_failure"]
    assert last is not None and last["reason"] == "behind" and last["revision"] == 2
    assert "is below revision 3" in last["problems"][0]


def test_older_revisions_read_at_start_are_history_not_failures() -> None:
    # A worker started on a local file newer than everything on the topic: the topic's
    # records are skipped quietly, no alert fires, and the file's rules stay.
    f, reg = feed(5)
    before = f.current()
    assert f.offer(record(2, offset=0)) is False
    assert f.offer(record(4, offset=1, mql=55)) is False
    assert f.current() is before
    assert reg.get_sample_value("leadflow_rules_load_failures_total",
                                {"reason": "behind"}) in (None, 0.0)
    assert f.status()["last_failure"] is None


def test_the_latest_of_equal_revisions_wins_as_in_publish() -> None:
    f, _ = feed(1)
    a, b = record(2, offset=1), record(2, offset=2, mql=55)
    assert f.offer(a) and f.offer(b)
    assert f.current() is b.rules
