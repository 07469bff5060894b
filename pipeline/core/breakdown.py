"""Why a lead has its score: groups, top contributing rules and recent events, as plain dicts.

Points in the breakdown are the points each rule awarded when its events arrived (after
caps), before decay: they explain where the score came from; the group scores show what
is left of it now.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.rules import CompiledRules
from pipeline.core.state import LeadState


def top_reasons(
    contributions: Mapping[str, tuple[float, int, str, int]],
    fit_hits: tuple[tuple[str, int], ...],
    n: int = 3,
) -> tuple[str, ...]:
    """Short human lines for an alert, biggest contributions first: ``pricing_page +30 (3x)``."""
    rows: list[tuple[float, str]] = [
        (pts, f"{rid} {pts:+g} ({cnt}x)") for rid, (pts, cnt, _m, _t) in contributions.items()]
    rows += [(float(p), f"{rid} {p:+d} (fit)") for rid, p in fit_hits]
    rows.sort(key=lambda x: (-abs(x[0]), x[1]))
    return tuple(line for _, line in rows[:n])


def breakdown(state: LeadState, rules: CompiledRules, *, top: int = 5) -> dict[str, Any]:
    """The breakdown of one lead, JSON-friendly, for an AE or the web view."""
    groups = rules.rule_groups
    contrib = sorted(state.contributions.items(), key=lambda kv: (-abs(kv[1][0]), kv[0]))
    return {
        "lead_id": state.lead_id,
        "stage": state.stage,
        "hot": state.hot,
        "score_total": round(rules.total(state.fit, state.engagement, state.product), 2),
        "scores_by_group": state.scores_by_group(),
        "as_of_ms": state.score_ms,
        "top_rules": [
            {"rule": rid, "group": groups.get(rid, "unknown"), "points": pts, "count": cnt,
             "last_message_id": mid, "last_at_ms": ts}
            for rid, (pts, cnt, mid, ts) in contrib[:top]
        ],
        "fit": [{"rule": rid, "points": p} for rid, p in state.fit_hits],
        "recent_events": [
            {"rule": rid, "message_id": mid, "points": pts, "at_ms": ts}
            for rid, mid, pts, ts in reversed(state.recent)
        ],
        "top_reasons": list(top_reasons(state.contributions, state.fit_hits)),
    }
