"""Durations as revenue operations write them: 30m, 12h, 7d, 2w."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 7 * 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: Any) -> int:
    """A duration such as ``30m``, ``12h``, ``7d`` or ``2w`` in milliseconds (> 0)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("a duration is written with a unit, e.g. 30m, 12h, 7d, 2w")
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a duration (e.g. 30m, 12h, 7d, 2w)")
    ms = int(m.group(1)) * _UNITS_MS[m.group(2)]
    if ms <= 0:
        raise ValueError("a duration must be positive")
    return ms


Duration = Annotated[int, BeforeValidator(parse_duration)]
