"""The document `GET /leads/{id}` returns, built from a lead's table record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.breakdown import breakdown
from pipeline.core.rules import CompiledRules
from pipeline.stream import dedup
from pipeline.stream.stages.records import LeadRecord


def lead_document(lead_id: str, record: Mapping[str, Any], rules: CompiledRules) -> dict[str, Any]:
    """Stage, scores by group, breakdown, last events, owner and routing of one lead."""
    rec = LeadRecord.from_stored(record)
    state = rec.state
    bd = breakdown(state, rules)
    traits = rec.traits()
    return {
        "lead_id": lead_id,
        "stage": bd["stage"],
        "hot": bd["hot"],
        "scores": {"total": bd["score_total"], **bd["scores_by_group"]},
        "as_of_ms": bd["as_of_ms"],
        "breakdown": {"top_rules": bd["top_rules"], "fit": bd["fit"],
                      "top_reasons": bd["top_reasons"]},
        "last_events": bd["recent_events"],
        "team": state.team or (rec.route.team if rec.route else None),
        "last_alert_id": rec.route.alert_id if rec.route else None,
        "owner": state.owner,
        "rejection": state.rejection,
        "traits": {k: traits[k] for k in ("title", "company", "country", "industry",
                                          "employees") if k in traits},
        "events_seen": dedup.count(rec.seen),
        "rules_version": rules.version,
        # the rules its fit was computed under: older until its next event (engine.refit)
        "fit_rules_version": state.fit_rules,
    }
