"""Recovery progress for /readyz and the log: restored of total per table and partition,
rate, time left."""

from __future__ import annotations

from pipeline.stream.progress import RecoveryProgress, describe


def test_first_sample_has_counts_and_no_rate() -> None:
    p = RecoveryProgress()
    view = p.update(100.0, {("leads", 0): 6000, ("leads", 1): 4000, ("identity", 0): 0})
    # identity has nothing left: not listed; no rate from a single sample; without a known
    # total, the first count left is the total
    assert view == {"leads": {
        "restored": 0, "total": 10000, "remaining": 10000,
        "partitions": {"0": {"restored": 0, "total": 6000, "remaining": 6000},
                       "1": {"restored": 0, "total": 4000, "remaining": 4000}}}}
    assert describe(view) == "leads 0/10000 restored [0 0/6000 restored, 1 0/4000 restored]"


def test_rate_and_time_left_come_from_the_last_two_samples() -> None:
    p = RecoveryProgress()
    p.update(100.0, {("leads", 0): 6000, ("leads", 1): 4000})
    # 5 s later: 10,000 -> 2,500 left, 1,500/s, 2,500 / 1,500 = 1.7 s to go
    view = p.update(105.0, {("leads", 0): 2000, ("leads", 1): 500})
    leads = view["leads"]
    assert leads["rate_per_s"] == 1500.0 and leads["eta_s"] == 1.7
    assert (leads["restored"], leads["total"], leads["remaining"]) == (7500, 10000, 2500)
    # per partition too: 4,000 in 5 s and 2,000 left; 3,500 in 5 s and 500 left
    assert leads["partitions"]["0"] == {"restored": 4000, "total": 6000, "remaining": 2000,
                                        "rate_per_s": 800.0, "eta_s": 2.5}
    assert leads["partitions"]["1"]["rate_per_s"] == 700.0
    assert leads["partitions"]["1"]["eta_s"] == 0.7
    assert p.snapshot() == view
    assert describe(view) == ("leads 7500/10000 restored (1500/s, ~1.7 s) "
                              "[0 4000/6000 restored (800/s, ~2.5 s), "
                              "1 3500/4000 restored (700/s, ~0.7 s)]")
    # done: nothing left, nothing listed
    assert p.update(110.0, {("leads", 0): 0, ("leads", 1): 0}) == {}
    assert p.snapshot() == {}


def test_a_known_total_is_used_and_a_new_recovery_counts_from_its_own_start() -> None:
    p = RecoveryProgress()
    # the bulk restore knows its total before anything is restored or even sampled
    view = p.update(0.0, {("identity", 2): 700}, {("identity", 2): 1000})
    assert view["identity"]["partitions"]["2"] == {"restored": 300, "total": 1000,
                                                   "remaining": 700}
    assert p.update(1.0, {("identity", 2): 0}) == {}
    # a later recovery of the same partition: its own total, not the old one
    view = p.update(2.0, {("identity", 2): 40})
    assert view["identity"]["restored"] == 0 and view["identity"]["total"] == 40


def test_a_stalled_table_shows_no_rate_rather_than_a_wrong_one() -> None:
    p = RecoveryProgress()
    p.update(0.0, {("owners", 3): 50})
    owners = p.update(5.0, {("owners", 3): 50})["owners"]
    assert "rate_per_s" not in owners and "rate_per_s" not in owners["partitions"]["3"]
