"""Noticing records a consumer skipped: the offsets of a partition must not jump."""

from __future__ import annotations

from collections.abc import Callable, Iterable


class OffsetWatch:
    """The next offset expected per partition, from the records seen in order.

    Faust's consumer can drop the rest of a fetched batch on a rebalance and then count the
    jump as done (faust #606): those records would never be processed. On topics written
    without transactions and not compacted, a jump within one assignment is never
    legitimate, so the caller reads the skipped records again from the offset this returns.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}

    def holes(
        self,
        records: Iterable[tuple[str, int, int]],
        committed: Callable[[tuple[str, int]], int | None] = lambda tp: None,
    ) -> dict[tuple[str, int], int]:
        """(topic, partition, offset) in delivery order -> {(topic, partition): first skipped}.

        `committed` gives the group's committed offset of a partition not seen yet (after
        an assignment): its first record must be that one, or records were skipped at the
        very start of the takeover.
        """
        found: dict[tuple[str, int], int] = {}
        expect = self._next
        for topic, partition, offset in records:
            tp = (topic, partition)
            want = expect.get(tp)
            if want is None:
                want = committed(tp)
            if want is not None and offset > want and tp not in found:
                found[tp] = want
            # Lower than expected: records read again (after a seek); follow them.
            expect[tp] = offset + 1
        return found

    def reset(self) -> None:
        """Forget every position: after a rebalance a partition may come back far ahead."""
        self._next.clear()
