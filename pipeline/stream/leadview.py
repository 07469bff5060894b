"""The document `GET /leads/{id}` returns, built from a lead's table record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.breakdown import breakdown
from pipeline.core.rules import CompiledRules
from pipeline.core.state import LeadState
from pipeline.stream import dedup
from pipeline.stream.steps import rec_traits


def lead_document(lead_id: str, record: Mapping[str, Any], rules: CompiledRules) -> dict[str, Any]:
    """Stage, scores by group, breakdown, last events, owner and routing of one lead."""
    state = LeadState.from_dict(record["s"])
    bd = breakdown(state, rules)
    route = record.get("route") or {}
    traits = rec_traits(record)
    return {
        "lead_id": lead_id,
        "stage": bd["stage"],
        "hot": bd["hot"],
        "scores": {"total": bd["score_total"], **bd["scores_by_group"]},
        "as_of_ms": bd["as_of_ms"],
        "breakdown": {"top_rules": bd["top_rules"], "fit": bd["fit"],
                      "top_reasons": bd["top_reasons"]},
        "last_events": bd["recent_events"],
        "team": state.team or route.get("team"),
        "last_alert_id": route.get("alert_id"),
        "owner": state.owner,
        "rejection": state.rejection,
        "traits": {k: traits[k] for k in ("title", "company", "country", "industry",
                                          "employees") if k in traits},
        "events_seen": dedup.count(record.get("seen")),
        # where the lead came from (campaigns and referring hosts, no personal data) and
        # whether marketing nurtures it now
        "touches": [{"channel": t.channel, "source": t.source, "medium": t.medium,
                     "campaign": t.campaign, "referrer": t.referrer, "at_ms": t.at_ms,
                     "count": t.count, "marks": list(t.marks)} for t in state.touches],
        "nurture": state.nurture,
        "rules_version": rules.version,
    }
