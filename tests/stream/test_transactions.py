"""Exactly-once consumer fixes: which stream partitions a worker reads from their beginning
after a rebalance, and which fetched records it must fetch again."""

from __future__ import annotations

from faust.types import TP

from pipeline.stream.transactions import from_start, handed_on

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


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_records_faust_would_drop_are_sought_back_to_their_first() -> None:
    """A rebalance empties Faust's active set while aiokafka waits with it: what comes back
    for a paused partition must be fetched again, not dropped past."""
    active = {TP("app-leads", 0)}
    records = {
        TP("app-leads", 0): [_Record(91), _Record(93)],  # active: handed on
        TP("app-leads", 3): [_Record(26), _Record(28)],  # paused, still ours
        TP("app-identity", 1): [_Record(7)],  # paused and no longer assigned
    }
    kept, back = handed_on(records, active.__contains__,
                           assigned={TP("app-leads", 0), TP("app-leads", 3)})
    assert [r.offset for r in kept[TP("app-leads", 0)]] == [91, 93]
    assert list(kept) == [TP("app-leads", 0)]
    assert back == {TP("app-leads", 3): 26}


def test_nothing_sought_back_when_every_partition_is_handed_on() -> None:
    records = {TP("events.web", 2): [_Record(5)]}
    assert handed_on(records, lambda tp: True, assigned=set(records)) == (records, {})
