"""What /readyz says about standby partitions: what the standby follower holds and saw."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition
from faust.types import TP

from pipeline.stream.standby import StandbyFollower, StandbyTarget
from pipeline.stream.web import standby_positions


@dataclass
class _Store:
    offsets: dict[TP, int | None]

    def persisted_offset(self, tp: TP) -> int | None:
        return self.offsets.get(tp)


@dataclass
class _Consumer:
    """Like aiokafka's: asking about a partition it is not assigned fails."""

    assigned: set[TopicPartition]
    highwaters: dict[TopicPartition, int] = field(default_factory=dict)
    stable: dict[TopicPartition, int] = field(default_factory=dict)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def highwater(self, tp: TopicPartition) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return self.highwaters.get(tp)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return self.stable.get(tp)


LEADS1, LEADS3 = TP("a-leads-changelog", 1), TP("a-leads-changelog", 3)
IDENT0 = TP("a-identity-changelog", 0)


def _follower(*, exactly_once: bool) -> StandbyFollower:
    follower = StandbyFollower("localhost:9", exactly_once=exactly_once)
    leads = _Store({LEADS1: 41, LEADS3: None})
    # Set as `start` sets them, without the task that would read the broker.
    follower._targets = {TopicPartition(tp.topic, tp.partition): t for tp, t in (
        (LEADS1, StandbyTarget("leads", leads, LEADS1)),
        (LEADS3, StandbyTarget("leads", leads, LEADS3)),
        (IDENT0, StandbyTarget("identity", _Store({IDENT0: 7}), IDENT0)))}
    return follower


def test_each_standby_partition_names_its_stored_offset_and_the_end_seen() -> None:
    follower = _follower(exactly_once=False)
    # before the follower's consumer exists: no end seen
    assert standby_positions(follower) == {
        "identity": {"0": {"stored": 7, "end": None}},
        # nothing stored yet: -1
        "leads": {"1": {"stored": 41, "end": None}, "3": {"stored": -1, "end": None}},
    }
    follower._consumer = _Consumer(  # type: ignore[assignment]
        {TopicPartition(*LEADS1), TopicPartition(*LEADS3)},
        highwaters={TopicPartition(*LEADS1): 50}, stable={TopicPartition(*LEADS1): 45})
    # leads[3] assigned, nothing fetched yet; identity[0] not (yet) assigned: no end
    assert standby_positions(follower) == {
        "identity": {"0": {"stored": 7, "end": None}},
        "leads": {"1": {"stored": 41, "end": 50}, "3": {"stored": -1, "end": None}}}


def test_under_exactly_once_the_end_is_the_last_stable_offset() -> None:
    follower = _follower(exactly_once=True)
    follower._consumer = _Consumer(  # type: ignore[assignment]
        {TopicPartition(*LEADS1)}, highwaters={TopicPartition(*LEADS1): 50},
        stable={TopicPartition(*LEADS1): 45})
    assert standby_positions(follower)["leads"]["1"] == {"stored": 41, "end": 45}


def test_a_stopped_follower_reports_no_standby() -> None:
    follower = _follower(exactly_once=False)
    follower.stop()
    assert standby_positions(follower) == {}
