"""Changelog recovery progress: records restored of total per table and partition, a rate,
time left.

Pure: fed samples of (monotonic seconds, records left per (table, partition), and where
known the total planned) by the worker's metrics timer; read by `/readyz` and the recovery
log line. A partition's total is the one given (the bulk restore knows it), else the most
records seen left since the partition began recovering. The rate is measured between the
last two samples, so a table that recovers in bursts shows its current pace rather than an
average since start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, int]


def _pace(entry: dict[str, Any], done: int, dt: float) -> None:
    if dt > 0 and done > 0:
        rate = done / dt
        entry["rate_per_s"] = round(rate, 1)
        entry["eta_s"] = round(entry["remaining"] / rate, 1)


@dataclass(slots=True)
class RecoveryProgress:
    """The latest two samples of records left, per table and partition."""

    _last: tuple[float, dict[Key, int]] | None = None
    _totals: dict[Key, int] = field(default_factory=dict)
    _view: dict[str, Any] = field(default_factory=dict)

    def update(self, now_s: float, remaining: Mapping[Key, int],
               totals: Mapping[Key, int] | None = None) -> dict[str, Any]:
        """Take a sample; return the view (also kept for `snapshot`)."""
        left = {k: max(0, int(v)) for k, v in remaining.items()}
        for k, n in left.items():
            if n == 0:
                self._totals.pop(k, None)  # done: the next recovery counts from its start
            elif totals is not None and k in totals:
                self._totals[k] = max(n, int(totals[k]))
            else:
                self._totals[k] = max(n, self._totals.get(k, 0))
        for k in set(self._totals) - set(left):
            del self._totals[k]
        before = self._last[1] if self._last is not None else {}
        dt = now_s - self._last[0] if self._last is not None else 0.0
        tables: dict[str, dict[str, Any]] = {}
        for (table, partition), n in sorted(left.items()):
            if n == 0:
                continue
            total = self._totals[(table, partition)]
            t = tables.setdefault(table, {"restored": 0, "total": 0, "remaining": 0,
                                          "partitions": {}})
            part = {"restored": total - n, "total": total, "remaining": n}
            was = before.get((table, partition))
            if was is not None:
                _pace(part, was - n, dt)
            t["partitions"][str(partition)] = part
            t["restored"] += total - n
            t["total"] += total
            t["remaining"] += n
        for table, t in tables.items():
            was_t = sum(n for (tb, _), n in before.items() if tb == table)
            if before:
                _pace(t, was_t - sum(n for (tb, _), n in left.items() if tb == table), dt)
        self._last = (now_s, left)
        self._view = tables
        return self._view

    def snapshot(self) -> dict[str, Any]:
        """Tables still recovering (empty when none is): restored, total, remaining, the
        same per partition, and once two samples exist, `rate_per_s` and `eta_s`."""
        return self._view


def _line(name: str, entry: Mapping[str, Any]) -> str:
    pace = (f" ({entry['rate_per_s']:g}/s, ~{entry['eta_s']:g} s)"
            if "rate_per_s" in entry else "")
    return f"{name} {entry['restored']}/{entry['total']} restored{pace}"


def describe(view: Mapping[str, Any]) -> str:
    """One log line: ``leads 38000/50000 restored (3800/s, ~3.2 s) [0: 19000/25000 ...]``."""
    parts = []
    for table, t in view.items():
        per = ", ".join(_line(p, e) for p, e in t["partitions"].items())
        parts.append(f"{_line(table, t)} [{per}]")
    return "; ".join(parts)
