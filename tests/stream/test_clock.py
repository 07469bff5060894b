"""The worker clock: wall time, or a start instant advanced at a rate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.stream.clock import Clock


class FakeWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_wall_time_by_default() -> None:
    wall = FakeWall(1_000.5)
    c = Clock.starting(None, wall=wall)
    assert c.now_ms() == 1_000_500
    wall.t += 2
    assert c.now_ms() == 1_002_500


def test_a_start_instant_advances_at_the_rate_from_when_the_clock_was_made() -> None:
    wall = FakeWall(50.0)
    sat = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    c = Clock.starting(sat, rate=1800, wall=wall)
    assert c.now_ms() == int(sat.timestamp() * 1000)
    wall.t += 2.0  # two seconds of wall time: an hour of clock time
    assert c.now_ms() == int(sat.timestamp() * 1000) + 3_600_000
    assert c.now_s() == sat.timestamp() + 3600


def test_a_rate_that_stops_time_is_refused() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        Clock(0, 0.0)
