"""OffsetWatch: a skipped record is noticed, re-reads and other partitions are not holes."""

from __future__ import annotations

from pipeline.stream.offsets import OffsetWatch


def test_a_jump_is_a_hole_from_the_first_skipped_offset() -> None:
    w = OffsetWatch()
    assert w.holes([("t", 0, 5), ("t", 0, 6), ("t", 1, 40)]) == {}
    # t[0] goes 7, 8 then 12: 9..11 were skipped; t[1] goes on normally
    assert w.holes([("t", 0, 7), ("t", 0, 8), ("t", 1, 41), ("t", 0, 12)]) == {("t", 0): 9}
    # after a seek back the records come again, lower than expected: no hole
    assert w.holes([("t", 0, 9), ("t", 0, 10), ("t", 0, 11), ("t", 0, 12)]) == {}
    assert w.holes([("t", 0, 13)]) == {}


def test_only_the_first_hole_of_a_partition_per_batch_and_reset_forgets() -> None:
    w = OffsetWatch()
    w.holes([("a", 0, 0)])
    assert w.holes([("a", 0, 3), ("a", 0, 9), ("b", 2, 100)]) == {("a", 0): 1}
    w.reset()  # a rebalance: the partition may come back far ahead
    assert w.holes([("a", 0, 500)]) == {}


def test_the_first_record_after_an_assignment_must_be_the_committed_one() -> None:
    w = OffsetWatch()
    committed = {("t", 0): 137, ("t", 1): 0}
    # t[0] starts at 141: 137..140 were skipped at the takeover; t[1] starts where committed
    got = w.holes([("t", 0, 141), ("t", 1, 0)], lambda tp: committed.get(tp))
    assert got == {("t", 0): 137}
    # a partition nobody committed yet: any start is fine
    assert w.holes([("u", 0, 50)], lambda tp: committed.get(tp)) == {}
