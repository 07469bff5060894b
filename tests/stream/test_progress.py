"""Recovery progress for /readyz and the log: left per table and partition, rate, time left."""

from __future__ import annotations

from pipeline.stream.progress import RecoveryProgress, describe


def test_first_sample_has_counts_and_no_rate() -> None:
    p = RecoveryProgress()
    view = p.update(100.0, {("leads", 0): 6000, ("leads", 1): 4000, ("identity", 0): 0})
    # identity has nothing left: not listed; no rate from a single sample
    assert view == {"leads": {"remaining": 10000, "partitions": {"0": 6000, "1": 4000}}}
    assert describe(view) == "leads 10000 left"


def test_rate_and_time_left_come_from_the_last_two_samples() -> None:
    p = RecoveryProgress()
    p.update(100.0, {("leads", 0): 6000, ("leads", 1): 4000})
    # 5 s later: 10,000 -> 2,500 left, 1,500/s, 2,500 / 1,500 = 1.7 s to go
    view = p.update(105.0, {("leads", 0): 2000, ("leads", 1): 500})
    assert view["leads"]["rate_per_s"] == 1500.0 and view["leads"]["eta_s"] == 1.7
    assert p.snapshot() == view
    assert describe(view) == "leads 2500 left (1500/s, ~1.7 s)"
    # done: nothing left, nothing listed
    assert p.update(110.0, {("leads", 0): 0, ("leads", 1): 0}) == {}
    assert p.snapshot() == {}


def test_a_stalled_table_shows_no_rate_rather_than_a_wrong_one() -> None:
    p = RecoveryProgress()
    p.update(0.0, {("owners", 3): 50})
    assert "rate_per_s" not in p.update(5.0, {("owners", 3): 50})["owners"]
