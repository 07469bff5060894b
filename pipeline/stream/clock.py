"""The worker's "now": the one clock its SLA, routing and decay timers read.

Wall time by default. With a start instant (settings `clock_start`, `clock_rate`) time runs
from that instant at `rate` times wall speed, so that a test or a demo can live through a
weekend of SLA clocks in a minute; event times are never touched by it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Clock:
    """Now in ms: wall time, or `start_ms` advanced at `rate` from when the clock was made."""

    start_ms: int | None = None
    rate: float = 1.0
    wall: Callable[[], float] = time.time
    _made_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"clock rate must be > 0, got {self.rate}")
        object.__setattr__(self, "_made_at", self.wall())

    @classmethod
    def starting(cls, start: datetime | None, rate: float = 1.0,
                 wall: Callable[[], float] = time.time) -> Clock:
        """A clock from an aware start instant (None: wall time at `rate` 1)."""
        if start is None:
            return cls(None, 1.0, wall)
        return cls(int(start.timestamp() * 1000), rate, wall)

    def now_ms(self) -> int:
        """The current instant, in ms since the epoch."""
        wall = self.wall()
        if self.start_ms is None:
            return int(wall * 1000)
        return self.start_ms + int((wall - self._made_at) * 1000 * self.rate)

    def now_s(self) -> float:
        """The current instant, in seconds since the epoch."""
        return self.now_ms() / 1000
