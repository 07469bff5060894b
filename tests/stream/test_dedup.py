"""The compact dedup window of a lead (pipeline/stream/dedup.py)."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stream import dedup
from pipeline.stream.dedup import WIDTH, SeenWindow, count, digest

DAY = 86_400_000
WEEK = 7 * DAY
T0 = 1_767_225_600_000


def _stored(window: SeenWindow, cap: int = 5000) -> dict[str, str]:
    # As the table keeps it: JSON bytes and back.
    return dict(orjson.loads(orjson.dumps(window.to_dict(cap=cap))))


def test_an_id_is_new_once_within_a_batch_and_across_batches() -> None:
    w = SeenWindow(None, retention_ms=WEEK)
    assert w.add("m1", T0) is True
    assert w.add("m1", T0) is False
    assert w.add("m2", T0 + 5) is True
    stored = _stored(w)
    assert count(stored) == 2
    again = SeenWindow(stored, retention_ms=WEEK)
    assert again.add("m2", T0 + 5) is False
    assert again.add("m1", T0 + 3 * DAY) is False  # any bucket, not only the event's own
    assert again.add("m3", T0) is True


def test_a_digest_found_across_a_boundary_of_two_digests_is_not_a_match() -> None:
    a, b = digest("a"), digest("b")
    straddle = (a + b)[WIDTH // 2: WIDTH // 2 + WIDTH]
    assert dedup._holds(a + b, a) and dedup._holds(a + b, b)
    assert not dedup._holds(a + b, straddle)


def test_buckets_wholly_older_than_the_retention_are_dropped() -> None:
    w = SeenWindow(None, retention_ms=WEEK)
    assert w.add("old", T0)
    assert w.add("new", T0 + 9 * DAY)
    stored = _stored(w)
    assert count(stored) == 1
    assert SeenWindow(stored, retention_ms=WEEK).add("old", T0) is True
    assert SeenWindow(stored, retention_ms=WEEK).add("new", T0 + 9 * DAY) is False


def test_ids_within_the_retention_are_all_kept() -> None:
    w = SeenWindow(None, retention_ms=WEEK)
    ids = [f"m{i}" for i in range(50)]
    for i, m in enumerate(ids):  # spread over the week, newest last
        assert w.add(m, T0 + i * (WEEK // 50))
    stored = _stored(w)
    assert count(stored) == 50
    w2 = SeenWindow(stored, retention_ms=WEEK)
    assert [w2.add(m, T0) for m in ids] == [False] * 50


def test_the_cap_drops_the_oldest_ids_first() -> None:
    w = SeenWindow(None, retention_ms=WEEK)
    for i in range(30):
        assert w.add(f"m{i}", T0 + i * DAY // 10)
    stored = _stored(w, cap=10)
    assert count(stored) == 10
    w2 = SeenWindow(stored, retention_ms=WEEK)
    assert [w2.add(f"m{i}", T0) for i in range(30)] == [True] * 20 + [False] * 10


def test_a_record_of_the_former_format_is_read_and_converted() -> None:
    former = {"m1": T0, "m2": T0 + DAY}
    assert count(former) == 2
    w = SeenWindow(former, retention_ms=WEEK)
    assert w.add("m1", T0) is False
    assert w.add("m9", T0) is True
    stored = _stored(w)
    assert all(isinstance(v, str) for v in stored.values())
    assert count(stored) == 3


# No per-example deadline: on a shared 2-core machine a slow example is not a failure.
@settings(deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40),
                          st.integers(min_value=0, max_value=WEEK)), max_size=60),
       st.integers(min_value=1, max_value=4))
def test_whatever_the_split_into_batches_an_id_is_new_exactly_once(
    msgs: list[tuple[str, int]], batches: int
) -> None:
    """Within the retention and under the cap, the window answers like a plain set."""
    stored: dict[str, str] | None = None
    seen: set[str] = set()
    size = max(1, len(msgs) // batches)
    for i in range(0, len(msgs) or 1, size):
        w = SeenWindow(stored, retention_ms=WEEK)
        for m, off in msgs[i:i + size]:
            assert w.add(m, T0 + off) is (m not in seen)
            seen.add(m)
        stored = _stored(w)
    assert count(stored) == len(seen)

