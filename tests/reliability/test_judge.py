"""The reliability verdict counts an alert as duplicated only beyond the reference's copies."""

from __future__ import annotations

from tests.support.reliability import Reference, judge, takeover_s


def _ref(alerts: list[str]) -> Reference:
    return Reference(scores={}, events={}, stage={}, moves=[], stage_if_generator_order={},
                     alerts=alerts)


def test_an_id_the_core_raises_twice_is_no_duplicate_when_sent_twice() -> None:
    ref = _ref(["l1:review:m1", "l1:review:m1", "l2:hot"])
    v = judge(ref, {}, [], ["l2:hot", "l1:review:m1", "l1:review:m1"])
    assert (v.alerts_duplicated, v.alerts_lost, v.alerts_unexpected) == (0, [], [])


def test_copies_beyond_the_reference_are_duplicates_and_missing_ones_lost() -> None:
    ref = _ref(["l1:review:m1", "l1:review:m1", "l2:hot"])
    v = judge(ref, {}, [], ["l1:review:m1", "l1:review:m1", "l1:review:m1", "l2:hot",
                            "l2:hot"])
    assert v.alerts_duplicated == 2 and v.alerts_lost == []
    v = judge(ref, {}, [], ["l1:review:m1", "l2:hot", "l9:x", "l9:x"])
    assert v.alerts_lost == ["l1:review:m1"] and v.alerts_unexpected == ["l9:x"]
    assert v.alerts_duplicated == 1  # the unexpected id's second copy


def test_takeover_counts_from_the_kill_to_the_first_later_alert_of_a_moved_partition() -> None:
    parts = {"a": 0, "b": 1, "c": 2}
    alerts = [("a", 99.0), ("b", 103.5), ("c", 101.0), ("a", 104.0), ("zz", 100.5)]
    # "c" is on a partition that stayed; "a" at 99 came before the kill; "zz" is unknown
    assert takeover_s(100.0, {0, 1}, parts, alerts) == (3.5, 2)
    assert takeover_s(100.0, {3}, parts, alerts) == (None, 0)
