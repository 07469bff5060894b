"""The lifecycle state machine: stages, the one table of allowed moves, CRM event moves.

visitor (anonymous) -> lead (known) -> mql -> sal -> sql -> opportunity -> customer, with
side stages recycled and disqualified, and pql as the product qualification path (a PQL
is routed like an SQL candidate: sales may accept it, qualify it or open an opportunity).

A move has a cause kind; a move is allowed only if `ALLOWED[(from, to)]` lists that kind.
A move that is asked for and not allowed becomes a `MoveRefused` output (never silently
applied, never silently dropped): CRM events and instant triggers always ask; score
thresholds ask only when the score crosses the line, so that a customer's page views do
not report a refusal each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Stage = Literal["visitor", "lead", "mql", "pql", "sal", "sql", "opportunity", "customer",
                "recycled", "disqualified"]
STAGES: tuple[str, ...] = ("visitor", "lead", "mql", "pql", "sal", "sql", "opportunity",
                           "customer", "recycled", "disqualified")

# Why a move is asked for.
IDENTIFIED = "identified"  # the visitor became known (userId or an e-mail trait)
SCORE = "score"  # the total crossed the mql line
PRODUCT = "product"  # the product group crossed the pql line
TRIGGER = "trigger"  # an instant trigger rule (demo request, talk to sales, quote)
DECAY = "decay"  # the total decayed below the recycle line
CRM = "crm"  # a sales move from the CRM
DISQUALIFY = "disqualify"  # a rule with `disqualify: true` (competitor, spam complaint...)

_C = frozenset
# The one table: (from, to) -> the causes that may make that move.
ALLOWED: Mapping[tuple[str, str], frozenset[str]] = {
    ("visitor", "lead"): _C({IDENTIFIED}),
    ("lead", "mql"): _C({SCORE, TRIGGER}),
    ("recycled", "mql"): _C({SCORE, TRIGGER}),
    ("lead", "pql"): _C({PRODUCT, TRIGGER}),
    ("mql", "pql"): _C({PRODUCT, TRIGGER}),
    ("recycled", "pql"): _C({PRODUCT, TRIGGER}),
    ("lead", "sql"): _C({TRIGGER}),
    ("recycled", "sql"): _C({TRIGGER}),
    ("mql", "sql"): _C({TRIGGER, CRM}),
    ("pql", "sql"): _C({TRIGGER, CRM}),
    ("sal", "sql"): _C({TRIGGER, CRM}),
    ("mql", "sal"): _C({CRM}),
    ("pql", "sal"): _C({CRM}),
    ("mql", "opportunity"): _C({CRM}),
    ("pql", "opportunity"): _C({CRM}),
    ("sal", "opportunity"): _C({CRM}),
    ("sql", "opportunity"): _C({CRM}),
    ("opportunity", "customer"): _C({CRM}),
    ("mql", "recycled"): _C({DECAY, CRM}),
    ("pql", "recycled"): _C({DECAY, CRM}),
    ("sal", "recycled"): _C({CRM}),
    ("sql", "recycled"): _C({CRM}),
    ("opportunity", "recycled"): _C({CRM}),
    **{(s, "disqualified"): _C({CRM, DISQUALIFY}) for s in
       ("visitor", "lead", "mql", "pql", "sal", "sql", "opportunity", "recycled")},
}

# CRM track events that stop an alert's SLA timer (`leadflow alerts ack` sends the first).
ALERT_ACKNOWLEDGED = "Alert Acknowledged"
LEAD_CONTACTED = "Lead Contacted"
ACK_EVENTS: frozenset[str] = frozenset({ALERT_ACKNOWLEDGED, LEAD_CONTACTED})

# The Segment Spec's e-mail event for an opt-out: the lead leaves nurture for good.
UNSUBSCRIBED = "Unsubscribed"

# CRM track events and the stage they ask for; None: recorded, no stage move.
CRM_EVENTS: Mapping[str, str | None] = {
    "Lead Accepted": "sal",
    "Lead Rejected": "recycled",
    "Lead Qualified": "sql",
    "Opportunity Created": "opportunity",
    "Deal Won": "customer",
    "Deal Lost": "recycled",
    "Lead Disqualified": "disqualified",
    LEAD_CONTACTED: None,  # a sales touch (speed-to-lead), not a stage
    ALERT_ACKNOWLEDGED: None,
}

# Stages in which alerts are raised: not before a lead is known, not once sales closed it.
ALERTABLE: frozenset[str] = frozenset({"lead", "mql", "pql", "sal", "sql", "recycled"})
# Stages whose score-driven moves are automatic (marketing-owned).
DECAYS_TO_RECYCLED: frozenset[str] = frozenset({"mql", "pql"})


def refusal(from_stage: str, to_stage: str, cause: str) -> str | None:
    """None if the move is allowed for this cause, else the reason it is refused."""
    causes = ALLOWED.get((from_stage, to_stage))
    if causes is not None and cause in causes:
        return None
    if causes is None:
        return f"no move from {from_stage} to {to_stage}"
    return f"{from_stage} -> {to_stage} is not made by {cause} (only {', '.join(sorted(causes))})"

# Funnel order, to tell "already past this stage" (no report) from a refused step.
RANK: Mapping[str, int] = {"visitor": 0, "lead": 1, "recycled": 1, "mql": 2, "pql": 3,
                           "sal": 4, "sql": 5, "opportunity": 6, "customer": 7,
                           "disqualified": 7}
_TERMINAL = frozenset({"customer", "disqualified"})


def decide(from_stage: str, to_stage: str, cause: str) -> tuple[bool, str | None]:
    """(move?, refusal to report): whether an asked-for move happens, else why it is refused.

    CRM moves and moves out of customer/disqualified are always reported when refused; an
    automatic move toward a stage the lead is already past (an SQL crossing the mql line)
    is not a refusal, and a visitor's score waits silently until the visitor is known.
    """
    if from_stage == to_stage:
        return False, None
    reason = refusal(from_stage, to_stage, cause)
    if reason is None:
        return True, None
    if cause == CRM or from_stage in _TERMINAL:
        return False, reason
    if from_stage == "visitor" and cause in (SCORE, PRODUCT):
        return False, None
    if RANK[from_stage] >= RANK[to_stage]:
        return False, None
    return False, reason
