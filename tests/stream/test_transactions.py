"""Which stream partitions an exactly-once worker reads from their beginning after a rebalance."""

from __future__ import annotations

from faust.types import TP

from pipeline.stream.transactions import from_start

CHANGELOGS = {"app-leads-changelog"}


def test_partitions_with_nothing_committed_are_read_from_their_beginning() -> None:
    committed = {
        TP("events.email", 2): None,  # never committed: Faust's seek would skip it
        TP("events.email", 3): 0,
        TP("events.web", 2): 278,
        TP("app-leads-changelog", 2): None,  # recovery positions changelogs itself
    }
    assert from_start(committed, CHANGELOGS) == [TP("events.email", 2), TP("events.email", 3)]


def test_nothing_to_do_when_every_stream_partition_has_an_offset() -> None:
    assert from_start({TP("events.web", 0): 1, TP("app-leads-changelog", 0): None},
                      CHANGELOGS) == []
