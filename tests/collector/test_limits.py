"""The collector's rate limiting as pure functions: buckets on an injected clock, client IPs."""

from __future__ import annotations

import pytest

from pipeline.collector.limits import (
    RateLimiter,
    TokenBucket,
    client_ip,
    parse_networks,
    retry_after_s,
)
from pipeline.settings import Settings


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_the_burst_then_waits_for_refill() -> None:
    # rates and steps are powers of two, so the float arithmetic is exact
    clock = Clock()
    rl = RateLimiter(8.0, 5, clock)
    for _ in range(5):
        assert rl.admit("ip") == 0.0
        rl.spend("ip", 1)
    assert rl.admit("ip") == 0.125  # one token at 8/s
    clock.now += 0.0625
    assert rl.admit("ip") == 0.0625
    clock.now += 0.0625
    assert rl.admit("ip") == 0.0


def test_a_batch_bigger_than_the_burst_goes_through_and_the_next_waits_for_its_cost() -> None:
    clock = Clock()
    rl = RateLimiter(64.0, 32, clock)
    assert rl.admit("k") == 0.0
    rl.spend("k", 288)  # tokens now 32 - 288 = -256
    assert rl.admit("k") == 257 / 64  # 4.015625 s until one whole token
    assert retry_after_s(rl.admit("k")) == 5
    clock.now += 4
    assert rl.admit("k") == 1 / 64
    clock.now += 1 / 64
    assert rl.admit("k") == 0.0


def test_refill_stops_at_the_burst() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, 3, clock)
    rl.spend("k", 3)
    clock.now += 3600
    for _ in range(3):
        assert rl.admit("k") == 0.0
        rl.spend("k", 1)
    assert rl.admit("k") == pytest.approx(1.0)


def test_names_have_their_own_buckets() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, 2, clock)
    rl.spend("a", 2)
    assert rl.admit("a") > 0
    assert rl.admit("b") == 0.0


def test_least_recently_used_buckets_are_dropped_past_the_cap() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, 1, clock, max_buckets=3)
    for name in ("a", "b", "c"):
        rl.spend(name, 1)
    rl.spend("a", 0)  # "a" used again: "b" is now the least recent
    rl.spend("d", 1)
    assert len(rl) == 3
    assert rl.admit("b") == 0.0  # forgotten, so a fresh bucket
    assert rl.admit("a") > 0 and rl.admit("c") > 0 and rl.admit("d") > 0


def test_admit_does_not_remember_new_clients() -> None:
    rl = RateLimiter(1.0, 1, Clock())
    for i in range(100):
        assert rl.admit(f"10.0.0.{i}") == 0.0
    assert len(rl) == 0


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2),
                                              (4.51, 5), (30.0, 30)])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: int) -> None:
    assert retry_after_s(wait) == header


def test_token_bucket_wait_is_computed_from_its_deficit() -> None:
    b = TokenBucket(rate=2.0, burst=4.0, tokens=-3.0, updated=0.0)
    assert b.admit(0.0) == pytest.approx(2.0)  # (1 - -3) / 2
    assert b.admit(1.0) == pytest.approx(1.0)  # refilled to -1


TRUSTED = parse_networks(["10.0.0.0/8", "192.168.1.5", "2001:db8::/32"])


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    # no proxy trusted, or an untrusted peer: X-Forwarded-For is the client's own claim
    ("203.0.113.7", ["1.1.1.1"], "203.0.113.7"),
    # a trusted load balancer: the address it saw
    ("10.1.2.3", ["198.51.100.9"], "198.51.100.9"),
    # the client forged a first hop; the balancer appended the real one
    ("10.1.2.3", ["6.6.6.6, 198.51.100.9"], "198.51.100.9"),
    # two trusted hops (CDN edge in 10/8, then the balancer), headers split over lines
    ("192.168.1.5", ["198.51.100.9, 10.9.9.9", "10.0.0.1"], "198.51.100.9"),
    # every hop trusted: the leftmost is the best we know
    ("10.1.2.3", ["10.4.4.4"], "10.4.4.4"),
    # garbage from a trusted hop: stop at the last address we could read
    ("10.1.2.3", ["unknown"], "10.1.2.3"),
    ("10.1.2.3", ["198.51.100.9, junk, 10.2.2.2"], "10.2.2.2"),
    # ports and IPv6 forms
    ("10.1.2.3", ["198.51.100.9:4711"], "198.51.100.9"),
    ("10.1.2.3", ["[2001:db9::1]:443"], "2001:db9::1"),
    ("2001:db8::5", ["2001:db9::1"], "2001:db9::1"),
    # a dual-stack socket's IPv4 peer
    ("::ffff:10.1.2.3", ["198.51.100.9"], "198.51.100.9"),
    ("::ffff:203.0.113.7", [], "203.0.113.7"),
    # trusted peer, no header
    ("10.1.2.3", [], "10.1.2.3"),
])
def test_client_ip(peer: str, xff: list[str], expected: str) -> None:
    assert client_ip(peer, xff, TRUSTED) == expected


def test_client_ip_ignores_xff_when_nothing_is_trusted() -> None:
    assert client_ip("10.1.2.3", ["198.51.100.9"], ()) == "10.1.2.3"


def test_bad_trusted_proxy_setting_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        Settings(collector_trusted_proxies=["10.0.0.0/8", "10.0.0.0/33"])
    assert Settings(collector_trusted_proxies=["10.0.0.0/8"]).collector_trusted_proxies == [
        "10.0.0.0/8"]


def test_defaults_fit_a_shared_browser_key() -> None:
    s = Settings()
    # one key is shared by every visitor: its ceiling is far above any one client's
    assert s.collector_rate_per_s >= 50 * s.collector_ip_rate_per_s
    assert s.collector_burst >= 10 * s.collector_ip_burst
    # a client may send a full Segment batch (500 messages) at once
    assert s.collector_ip_burst >= 500
