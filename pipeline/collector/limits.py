"""Per-write-key rate limiting: a token bucket per key, refilled continuously."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second up to `burst`; a request needs one token and pays for each
    message it carries. A large batch may drive the bucket negative (it is let through whole,
    rather than refused forever when it is bigger than the burst); later requests wait."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def admit(self, now: float) -> float:
        """0.0 if a request may go ahead, else the seconds to wait before retrying."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def spend(self, n: int, now: float) -> None:
        """Pay for `n` messages."""
        self._refill(now)
        self.tokens -= n


class RateLimiter:
    """One token bucket per write key (keys are few and configured, so the map stays small)."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, key: str) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            b = TokenBucket(self.rate, self.burst, self.burst, self.clock())
            self._buckets[key] = b
        return b

    def admit(self, key: str) -> float:
        """0.0 if `key` may send now, else the seconds until it may (for Retry-After)."""
        return self._bucket(key).admit(self.clock())

    def spend(self, key: str, n: int) -> None:
        """Charge `n` messages to `key`."""
        self._bucket(key).spend(n, self.clock())
