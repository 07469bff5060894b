"""The document `GET /leads/{id}` returns, built from a lead's table record."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.breakdown import breakdown
from pipeline.core.rules import CompiledRules
from pipeline.core.state import MAX_CHANGES
from pipeline.errors import InvalidQuery
from pipeline.models.timefmt import iso_z
from pipeline.stream import dedup
from pipeline.stream.stages.records import LeadRecord
from pipeline.stream.stages.score import rec_traits


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
        # where the lead came from (campaigns and referring hosts, no personal data) and
        # whether marketing nurtures it now
        "touches": [{"channel": t.channel, "source": t.source, "medium": t.medium,
                     "campaign": t.campaign, "referrer": t.referrer, "at_ms": t.at_ms,
                     "count": t.count, "marks": list(t.marks)} for t in state.touches],
        "nurture": state.nurture,
        "rules_version": rules.version,
        # the rules its fit was computed under: older until its next event (engine.refit)
        "fit_rules_version": state.fit_rules,
    }


def history_document(lead_id: str, record: Mapping[str, Any], *, ledger: bool) -> dict[str, Any]:
    """A lead's recent score changes, newest first: what `GET /leads/{id}/history` returns.

    "Recent" is the last `MAX_CHANGES` changes the lead's state keeps: they are written in
    the same table write as the scores they explain, so the history always agrees with
    `GET /leads/{id}`, survives restarts and rebalances with the table, and costs no read
    of a topic. Changes made while the ledger was off are not in it; the full record is
    the score-changes topic.
    """
    state = LeadRecord.from_stored(record).state
    return {
        "lead_id": lead_id,
        "ledger": ledger,
        "kept": MAX_CHANGES,
        "scores": state.scores_by_group(),
        "changes": [{k: v for k, v in c.to_dict().items() if k not in ("output", "lead_id")}
                    | {"at": iso_z(c.at_ms)} for c in reversed(state.changes)],
    }


#: Longest search text: an e-mail address or a company name, not a document.
MAX_QUERY = 120
#: Most matches one worker returns for a search.
MAX_MATCHES = 50


@dataclass(frozen=True, slots=True)
class LeadMatch:
    """One lead a search found, with what a result list shows (personal data: e-mail)."""

    lead_id: str
    stage: str
    score: float
    email: str | None
    company: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"lead_id": self.lead_id, "stage": self.stage, "score": self.score,
                "email": self.email, "company": self.company}


def search_text(raw: str | None) -> str:
    """The search text of `?q=`, trimmed and lower-cased; InvalidQuery says what is wrong."""
    q = (raw or "").strip()
    if not q:
        raise InvalidQuery("the search is empty: give a lead id, an e-mail or a company (?q=...)")
    if len(q) > MAX_QUERY:
        raise InvalidQuery(f"the search is {len(q)} characters long; at most {MAX_QUERY}")
    if any(not ch.isprintable() for ch in q):
        raise InvalidQuery("the search contains control characters")
    return q.casefold()


def company_name(value: Any) -> str | None:
    """A company trait as a name: Segment's `company.name`, or a flat string."""
    if isinstance(value, Mapping):
        value = value.get("name")
    return value if isinstance(value, str) and value else None


def search_leads(q: str, items: Iterable[tuple[bytes, bytes]], rules: CompiledRules, *,
                 limit: int = MAX_MATCHES) -> list[LeadMatch]:
    """Leads whose id, e-mail or company contains `q` (from `search_text`), in table order.

    `items` are raw (key, value) records of the leads table; a record is decoded only when
    its bytes contain the text, so a search over a big table stays a byte scan.
    """
    # bytes.lower() folds ASCII only: other text is checked on the decoded fields alone.
    needle = q.encode() if q.isascii() else None
    out: list[LeadMatch] = []
    for key, raw in items:
        if needle is not None and needle not in raw.lower() and needle not in key.lower():
            continue
        record = orjson.loads(raw)
        if not isinstance(record, Mapping) or "s" not in record:
            continue
        traits = rec_traits(record)
        email = traits.get("email") if isinstance(traits.get("email"), str) else None
        company = company_name(traits.get("company"))
        lead_id = key.decode(errors="replace")
        if not any(q in f.casefold() for f in (lead_id, email or "", company or "")):
            continue  # the bytes matched another field (an event name, a title...)
        s = record["s"]
        score = round(rules.total(float(s.get("fit", 0)), float(s.get("engagement", 0)),
                                  float(s.get("product", 0))), 2)
        out.append(LeadMatch(lead_id, str(s.get("stage", "visitor")), score, email, company))
        if len(out) >= limit:
            break
    return out
