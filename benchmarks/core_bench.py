"""Micro-benchmark of the pure core (not a test): events per second on one core.

Generates realistic events in memory for N leads with skewed activity (a few very
active leads, a long tail), then times `apply` event by event and `apply_batch` per lead:
whole leads, and chunks of 20 and 5 events (the stream calls `apply_batch` once per lead per
batch, typically with 1-20 events). Each line gives the best of `--repeat` runs by wall
clock and by this process's CPU time; on a shared machine the CPU figure is the one that
measures the core on one core (wall time also counts waiting for the CPU). Each line is
timed with the score ledger off (the stream's cost without it) and on (a ScoreChange per
score change), the two runs alternating so that both see the same machine.

    .venv/bin/python benchmarks/core_bench.py [--leads 10000] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from pipeline.core.engine import apply, apply_batch
from pipeline.core.event import Event
from pipeline.core.rules import CompiledRules, load_default_rules
from pipeline.core.state import LeadState

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000

PAGES = [("Blog Post", "https://example.com/blog/post-{}", 40),
         ("Home", "https://example.com/", 20),
         ("Pricing", "https://example.com/pricing", 8),
         ("Compare", "https://example.com/compare/rival", 4),
         ("Customers", "https://example.com/customers/acme", 4),
         ("Docs", "https://example.com/docs/start-{}", 15),
         ("Careers", "https://example.com/careers", 2)]
TRACKS = [("Email Opened", "email", 20), ("Email Link Clicked", "email", 6),
          ("Document Downloaded", "web", 4), ("Form Submitted", "web", 2),
          ("Invite Sent", "product", 3), ("Trial Started", "product", 1),
          ("Feature Limit Reached", "product", 1), ("Unsubscribed", "email", 0.3),
          ("Demo Requested", "web", 0.3), ("Webinar Registered", "web", 1)]
TITLES = ["VP Marketing", "Head of Sales", "Software Engineer", "Student", "Director IT",
          "Marketing Manager", "CEO", "Intern"]


def generate(n_leads: int, seed: int) -> list[list[Event]]:
    """Per lead, its events in time order (about 30 per lead on average, heavy tail)."""
    rnd = random.Random(seed)
    page_w = [w for *_, w in PAGES]
    track_w = [w for *_, w in TRACKS]
    out: list[list[Event]] = []
    for i in range(n_leads):
        lead = f"user-{i}"
        n = min(2000, int(rnd.paretovariate(1.3) * 8))
        t = T0 + rnd.randrange(0, 30 * 24 * 60) * MIN
        evs: list[Event] = []
        identified = False
        for j in range(n):
            t += int(rnd.expovariate(1 / (6 * 60 * MIN)))
            mid = f"{lead}-{j}"
            uid = lead if identified else None
            x = rnd.random()
            if not identified and (x < 0.05 or j == n // 3):
                identified = True
                evs.append(Event(mid, lead, "identify", t, user_id=lead, anonymous_id="a" + lead,
                                 traits={"email": f"{lead}@corp{i % 50}.com",
                                         "title": rnd.choice(TITLES),
                                         "employees": rnd.choice([5, 40, 300, 2000, 9000]),
                                         "industry": rnd.choice(["software", "retail"]),
                                         "country": rnd.choice(["US", "DE", "BR"])}))
            elif x < 0.65:
                name, url, _ = rnd.choices(PAGES, page_w)[0]
                utm = {"source": "google", "medium": "cpc"} if rnd.random() < 0.1 else {}
                evs.append(Event(mid, lead, "page", t, name=name, source="web",
                                 url=url.format(j % 20), utm=utm, user_id=uid))
            else:
                name, src, _ = rnd.choices(TRACKS, track_w)[0]
                evs.append(Event(mid, lead, "track", t, name=name, source=src, user_id=uid,
                                 properties={"form": "ebook"} if name == "Form Submitted"
                                 else {}))
        out.append(evs)
    return out


def bench_apply(leads: Sequence[Sequence[Event]], rules: CompiledRules,
                ledger: bool = False) -> tuple[float, float]:
    """(wall, cpu) seconds to fold `apply` over every event (lead interleaving is irrelevant)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for evs in leads:
        s: LeadState | None = None
        for e in evs:
            s = apply(s, e, rules, ledger=ledger).state
    return time.perf_counter() - t0, time.process_time() - c0


def bench_batch(leads: Sequence[Sequence[Event]], rules: CompiledRules,
                chunk: int, ledger: bool = False) -> tuple[float, float]:
    """(wall, cpu) seconds for `apply_batch` per lead, in chunks of `chunk` events."""
    t0, c0 = time.perf_counter(), time.process_time()
    for evs in leads:
        s: LeadState | None = None
        for k in range(0, len(evs), chunk):
            s = apply_batch(s, evs[k:k + chunk], rules, ledger=ledger).state
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    """Generate, time, print events/s."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leads", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rules = load_default_rules()
    leads = generate(args.leads, args.seed)
    n = sum(len(x) for x in leads)
    print(f"{args.leads} leads, {n} events (max {max(len(x) for x in leads)} for one lead)")
    print(f"{'':42s} {'wall events/s':>14s} {'cpu events/s':>14s}")
    for label, fn in [("apply (one event per call)", lambda on: bench_apply(leads, rules, on)),
                      ("apply_batch (whole lead)",
                       lambda on: bench_batch(leads, rules, 10**9, on)),
                      ("apply_batch (chunks of 20)", lambda on: bench_batch(leads, rules, 20, on)),
                      ("apply_batch (chunks of 5)", lambda on: bench_batch(leads, rules, 5, on))]:
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.repeat):
            for on in (False, True):
                runs[on].append(fn(on))
        for on in (False, True):
            wall = min(w for w, _ in runs[on])
            cpu = min(c for _, c in runs[on])
            name = f"{label}, ledger {'on' if on else 'off'}"
            print(f"{name:42s} {n / wall:>14,.0f} {n / cpu:>14,.0f}  ({cpu:.2f} s cpu)")


if __name__ == "__main__":
    main()
