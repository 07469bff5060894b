"""The arithmetic behind the end-to-end benchmark's published figures (`e2e_bench.py`).

Pure functions, so that the rules are unit-tested (tests/benchmarks/test_figures.py):

- `rate`: events over a wall-clock (or CPU) span;
- `quantiles`: exact nearest-rank quantiles of a sample, no histogram interpolation;
- `throughput_span`: which polls of a consumer group start and stop a system's clock;
- `standby_lags`: how far a standby's store is behind its changelog, in records and seconds;
- `first_stamps`, `hop_delays`: how long each hop of the worker took per event (`hops_bench.py`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def rate(events: int, start_s: float, end_s: float) -> float | None:
    """`events` per second over [start_s, end_s]; None when the span is not positive."""
    if events < 0:
        raise ValueError(f"events must not be negative, got {events}")
    if end_s <= start_s:
        return None
    return events / (end_s - start_s)


def quantiles(samples: Iterable[float], qs: Sequence[float]) -> tuple[float, ...] | None:
    """Nearest-rank quantiles of `samples`, one per q in `qs`; None for an empty sample.

    The q-quantile of n sorted values is the value of rank ceil(q * n) (1-based), the smallest
    sample with at least a fraction q of the sample at or below it; q = 0 is the minimum.
    Every result is one of the samples: nothing is interpolated. 1..100 has p50 = 50,
    p99 = 99, p100 = 100.
    """
    ordered = sorted(samples)
    n = len(ordered)
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
    if n == 0:
        return None
    # q * n in binary floating point can land a hair above an integer (0.07 * 100 is
    # 7.000000000000001): round that away before taking the ceiling.
    return tuple(ordered[max(1, math.ceil(round(q * n, 9))) - 1] for q in qs)


@dataclass(frozen=True)
class Poll:
    """One look at a system's consumer group(s) by the benchmark."""

    t0: float  #: monotonic seconds when the poll's queries were sent
    t1: float  #: ... and when their answers were all in
    #: the broker had handed one of the system's groups its partitions (None: not known)
    assigned: bool | None
    committed: int  #: input offsets committed (summed over partitions)
    done: bool  #: every offset the system must commit (inputs, internal topics) committed
    cpu_s: float | None = None  #: CPU seconds of the system's process at t1


@dataclass(frozen=True)
class Span:
    """A system's throughput phase as the polls bound it."""

    start_s: float
    end_s: float
    events: int
    complete: bool
    cpu_s: float | None

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    def events_per_s(self) -> float | None:
        return rate(self.events, self.start_s, self.end_s)

    def events_per_cpu_s(self) -> float | None:
        if self.cpu_s is None or self.cpu_s <= 0:
            return None
        return self.events / self.cpu_s


def throughput_span(polls: Sequence[Poll]) -> Span | None:
    """The span from "not consuming yet" to "everything committed"; None if never assigned.

    Start: `t0` of the last poll before the first assigned one that saw none of the system's
    groups assigned (it could not have consumed anything yet; a poll that could not tell
    does not count), or of the first poll if there is none.
    End: `t1` of the first poll that saw every offset committed, else of the last poll
    (`complete` False). Events: input offsets committed at the end, counted from zero, which
    is exact because a fresh group has nothing committed before its assignment. Both ends
    err towards a longer span (at most a poll interval plus the system's commit interval),
    by the same rule for every system, so a rate is a lower bound.
    """
    first = next((i for i, p in enumerate(polls) if p.assigned), None)
    if first is None:
        return None
    begin = next((p for p in reversed(polls[:first]) if p.assigned is False), polls[0])
    end = next((p for p in polls[first:] if p.done), polls[-1])
    cpu = None if begin.cpu_s is None or end.cpu_s is None else end.cpu_s - begin.cpu_s
    return Span(begin.t0, end.t1, end.committed, end.done, cpu)


@dataclass(frozen=True, slots=True)
class StandbySample:
    """One look at a standby partition: when (seconds), the changelog's end offset (the
    next offset to be written) and the offset of the last record the standby's store holds
    (-1 before the first)."""

    at_s: float
    end: int
    stored: int


def standby_lags(samples: Sequence[StandbySample]) -> list[tuple[int, float]]:
    """Per sample of one partition (in time order): (records behind, seconds behind).

    Records: end - 1 - stored (at least 0). Seconds: how long ago the changelog was last
    no further than the store is now (the age of the standby's view; 0 when it is caught
    up), to the resolution of the samples; before any such sample, since the first one.
    """
    out: list[tuple[int, float]] = []
    for i, s in enumerate(samples):
        if i and s.at_s < samples[i - 1].at_s:
            raise ValueError("samples must be in time order")
        behind = max(0, s.end - 1 - s.stored)
        if behind == 0:
            out.append((0, 0.0))
            continue
        since = samples[0].at_s
        for earlier in reversed(samples[:i]):
            if earlier.end - 1 <= s.stored:
                since = earlier.at_s
                break
        out.append((behind, s.at_s - since))
    return out


def first_stamps(seen: Iterable[tuple[str | None, int]]) -> dict[str, int]:
    """(message id, record timestamp ms) pairs -> the earliest timestamp per id: a record
    written again (a batch retried after a rebalance or a crash) does not count twice."""
    out: dict[str, int] = {}
    for mid, ts in seen:
        if mid is not None and (mid not in out or ts < out[mid]):
            out[mid] = ts
    return out


def hop_delays(stamps: Mapping[str, Mapping[str, int]],
               chain: Sequence[str]) -> dict[str, list[float]]:
    """The delays (ms) of each hop of `chain` and of the whole of it, per message.

    `stamps` maps each stage to {message id: when it wrote the record carrying the
    message}. Hop "a>b" (consecutive stages) counts every message seen at both; "a>z"
    (first to last stage) only messages seen at every stage, and so does "a>b*" per hop,
    so that those hops add up to the whole for the same messages.
    """
    if len(chain) < 2:
        raise ValueError("a chain needs at least two stages")
    everywhere = set(stamps[chain[0]]).intersection(*(stamps[s] for s in chain[1:]))
    out: dict[str, list[float]] = {}
    for a, b in itertools.pairwise(chain):
        sa, sb = stamps[a], stamps[b]
        both = sorted(set(sa) & set(sb))
        out[f"{a}>{b}"] = [float(sb[m] - sa[m]) for m in both]
        out[f"{a}>{b}*"] = [float(sb[m] - sa[m]) for m in sorted(everywhere)]
    first, last = stamps[chain[0]], stamps[chain[-1]]
    out[f"{chain[0]}>{chain[-1]}"] = [float(last[m] - first[m]) for m in sorted(everywhere)]
    return out
