"""Rate limits: a token bucket per client IP and one per write key, refilled continuously.

Two buckets because a browser write key is public and shared by every visitor of a site:
the per-key bucket is a ceiling for the whole key (a leaked key flooded from many hosts),
sized far above a busy site's traffic; the per-IP bucket is what stops one abusive client
without throttling everybody else who uses the same key.

The client IP is the direct peer, unless that peer is a configured trusted proxy: then the
X-Forwarded-For chain is read from the right, skipping trusted proxies, and the first
address that is not one is the client (anything left of it could be forged by the client).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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

    def full_at(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst by `now` (it is then like a new one)."""
        return self.tokens + (now - self.updated) * self.rate >= self.burst


#: Default cap on remembered client buckets: about 100 bytes each, so ~10 MB at most.
MAX_BUCKETS = 100_000


class RateLimiter:
    """One token bucket per name (a write key, a client IP).

    Buckets are kept in least-recently-used order; past `max_buckets` the least recently
    used one is dropped. That forgives a client only if it has been quiet longer than any of
    `max_buckets` others, and it keeps memory bounded however many IPs a site sees.
    """

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
        *, max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, name: str) -> TokenBucket:
        b = self._buckets.pop(name, None)
        if b is None:
            b = TokenBucket(self.rate, self.burst, self.burst, self.clock())
            if len(self._buckets) >= self.max_buckets:
                del self._buckets[next(iter(self._buckets))]  # least recently used
        self._buckets[name] = b  # (re)inserted last: dict order is the LRU order
        return b

    def admit(self, name: str) -> float:
        """0.0 if `name` may send now, else the seconds until it may (for Retry-After)."""
        b = self._buckets.get(name)
        if b is None or b.full_at(self.clock()):
            return 0.0  # a new or refilled bucket admits: no need to remember it yet
        return self._bucket(name).admit(self.clock())

    def spend(self, name: str, n: int) -> None:
        """Charge `n` messages to `name`."""
        self._bucket(name).spend(n, self.clock())


def retry_after_s(wait_s: float) -> int:
    """The Retry-After header value (whole seconds, at least 1) for a wait in seconds."""
    return max(1, int(wait_s) + (wait_s > int(wait_s)))


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or bare addresses) as networks; ValueError names the bad entry."""
    out = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(c.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {c!r}") from None
    return tuple(out)


def _ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:51234"
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


def _trusted(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def client_ip(peer: str | None, forwarded_for: Iterable[str],
              trusted: tuple[IPNetwork, ...]) -> str:
    """The address a request is rate limited by.

    `forwarded_for` is every X-Forwarded-For header value in order; it is read only when the
    direct `peer` is trusted, and then from the right, each trusted hop vouching for the one
    before it. An entry that is not an address stops the walk at the hop that sent it.
    """
    ip = _ip(peer or "")
    if ip is None:
        return peer or "unknown"
    if not trusted or not _trusted(ip, trusted):
        return str(ip)
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break
        ip = hop_ip
        if not _trusted(ip, trusted):
            break
    return str(ip)
