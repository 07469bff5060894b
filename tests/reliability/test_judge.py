"""The reliability verdict: the core raises each alert id once, so any second copy is a
duplicate; the reference refuses a core that raises one id twice."""

from __future__ import annotations

from collections import Counter

from tests.support.reliability import (
    Reference,
    _stitched,
    judge,
    messages,
    reference,
    takeover_s,
)


def _ref(alerts: list[str]) -> Reference:
    return Reference(scores={}, events={}, stage={}, moves=[], stage_if_generator_order={},
                     alerts=alerts)


def test_every_copy_beyond_the_first_is_a_duplicate_and_missing_ids_are_lost() -> None:
    ref = _ref(["l1:review:m1", "l2:hot"])
    v = judge(ref, {}, [], ["l2:hot", "l1:review:m1"])
    assert (v.alerts_duplicated, v.alerts_lost, v.alerts_unexpected) == (0, [], [])
    v = judge(ref, {}, [], ["l1:review:m1", "l1:review:m1", "l1:review:m1", "l2:hot",
                            "l2:hot"])
    assert v.alerts_duplicated == 3 and v.alerts_lost == []
    v = judge(ref, {}, [], ["l1:review:m1", "l9:x", "l9:x"])
    assert v.alerts_lost == ["l2:hot"] and v.alerts_unexpected == ["l9:x"]
    assert v.alerts_duplicated == 1  # the unexpected id's second copy


def test_the_reference_raises_each_id_of_the_simulated_traffic_once() -> None:
    # the rebalance test's traffic, in generator order: it holds review hand-offs, among them
    # hand-raises that also cross the hot line, and `reference` refuses any id raised twice
    msgs = messages(300, 31)
    ref = reference(msgs, _stitched(msgs))
    assert sum(":review:" in k for k in ref.alerts) > 0
    assert max(Counter(ref.alerts).values()) == 1
def test_takeover_counts_from_the_kill_to_the_first_later_alert_of_a_moved_partition() -> None:
    parts = {"a": 0, "b": 1, "c": 2}
    alerts = [("a", 99.0), ("b", 103.5), ("c", 101.0), ("a", 104.0), ("zz", 100.5)]
    # "c" is on a partition that stayed; "a" at 99 came before the kill; "zz" is unknown
    assert takeover_s(100.0, {0, 1}, parts, alerts) == (3.5, 2)
    assert takeover_s(100.0, {3}, parts, alerts) == (None, 0)
