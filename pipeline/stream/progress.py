"""Changelog recovery progress: records left per table and partition, a rate, time left.

Pure: fed samples of (monotonic seconds, records left per (table, partition)) by the
worker's metrics timer; read by `/readyz` and the recovery log line. The rate is measured
between the last two samples of a table, so a table that recovers in bursts shows its
current pace rather than an average since start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RecoveryProgress:
    """The latest two samples of records left, per table and partition."""

    _last: tuple[float, dict[tuple[str, int], int]] | None = None
    _view: dict[str, Any] = field(default_factory=dict)

    def update(self, now_s: float, remaining: Mapping[tuple[str, int], int]) -> dict[str, Any]:
        """Take a sample; return the view (also kept for `snapshot`)."""
        left = {k: max(0, int(v)) for k, v in remaining.items()}
        tables: dict[str, dict[str, Any]] = {}
        for (table, partition), n in sorted(left.items()):
            t = tables.setdefault(table, {"remaining": 0, "partitions": {}})
            t["remaining"] += n
            t["partitions"][str(partition)] = n
        if self._last is not None:
            then, before = self._last
            dt = now_s - then
            for table, t in tables.items():
                was = sum(n for (tb, _), n in before.items() if tb == table)
                done = was - t["remaining"]
                if dt > 0 and done > 0:
                    rate = done / dt
                    t["rate_per_s"] = round(rate, 1)
                    t["eta_s"] = round(t["remaining"] / rate, 1)
        self._last = (now_s, left)
        self._view = {table: t for table, t in tables.items() if t["remaining"] > 0}
        return self._view

    def snapshot(self) -> dict[str, Any]:
        """Tables still recovering (empty when none is): remaining, per partition, and once
        two samples exist, `rate_per_s` and `eta_s`."""
        return self._view


def describe(view: Mapping[str, Any]) -> str:
    """One log line: ``leads 12000 left (3800/s, ~3 s); identity 50 left``."""
    parts = []
    for table, t in view.items():
        pace = (f" ({t['rate_per_s']:g}/s, ~{t['eta_s']:g} s)" if "rate_per_s" in t else "")
        parts.append(f"{table} {t['remaining']} left{pace}")
    return "; ".join(parts)
