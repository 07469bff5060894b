"""What the core emits: stage moves, refused moves, alerts and routing decisions.

All outputs are frozen dataclasses with a `to_dict()` giving a JSON-friendly dict whose
`output` key names the kind; the stream shell maps them to topics:
`StageMove` -> leads.stage-changes, `MoveRefused` -> leads.stage-changes (as a refusal),
`AlertTrigger` -> routing.<team>, `RoutingDecision` -> routing.nurture / recycle / review,
`Attribution` -> leads.attribution, `NurtureChange` -> leads.nurture,
`ScoreChange` -> leads.score-changes (only when the engine is asked for the ledger).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pipeline.core.touches import Touch

#: Kinds of alert the core raises for a team; a `Route` is also the kind of its messages.
AlertKind = Literal["instant", "hot_score", "pql"]
Temperature = Literal["hot", "warm", "cold"]
Route = Literal["nurture", "recycle", "review"]
ALERT_KINDS: frozenset[str] = frozenset(get_args(AlertKind))
ROUTES: frozenset[str] = frozenset(get_args(Route))


@dataclass(frozen=True, slots=True)
class StageMove:
    """A lead moved from one lifecycle stage to another, and why."""

    lead_id: str
    from_stage: str
    to_stage: str
    at_ms: int
    cause_rule: str  # a rule id, a threshold ("mql_threshold"), "decay", "crm:<event>"...
    cause_message_id: str | None
    score_total: float
    scores_by_group: Mapping[str, float]
    detail: str | None = None  # e.g. the reason sales gave with "Lead Rejected"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"output": "stage_move", "lead_id": self.lead_id, "from_stage": self.from_stage,
                "to_stage": self.to_stage, "at_ms": self.at_ms, "cause_rule": self.cause_rule,
                "cause_message_id": self.cause_message_id, "score_total": self.score_total,
                "scores_by_group": dict(self.scores_by_group), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class MoveRefused:
    """A move that was asked for (CRM event, trigger, threshold) but is not allowed."""

    lead_id: str
    from_stage: str
    to_stage: str
    at_ms: int
    reason: str
    cause_message_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"output": "move_refused", "lead_id": self.lead_id,
                "from_stage": self.from_stage, "to_stage": self.to_stage, "at_ms": self.at_ms,
                "reason": self.reason, "cause_message_id": self.cause_message_id}


@dataclass(frozen=True, slots=True)
class AlertTrigger:
    """A hot-lead alert for the owning team (instant trigger, hot score or PQL)."""

    lead_id: str
    kind: AlertKind
    temperature: Temperature
    at_ms: int
    rule: str
    message_id: str | None
    score_total: float
    scores_by_group: Mapping[str, float]
    top_reasons: tuple[str, ...]
    # The lead's earlier alert, still in the cooldown, that this stricter one updates
    # (a demo request after a hot-score alert): same owner, the tighter SLA.
    updates: str | None = None

    @property
    def alert_id(self) -> str:
        """Stable across replays: the same event raises the same alert id."""
        return f"{self.lead_id}:{self.kind}:{self.rule}:{self.message_id or self.at_ms}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"output": "alert", "alert_id": self.alert_id, "lead_id": self.lead_id,
                "kind": self.kind, "temperature": self.temperature, "at_ms": self.at_ms,
                "rule": self.rule, "message_id": self.message_id,
                "score_total": self.score_total, "scores_by_group": dict(self.scores_by_group),
                "top_reasons": list(self.top_reasons), "updates": self.updates}


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Warm leads go to nurture, cold/recycled ones to recycle (hot ones get an alert), and
    hand-raisers or hot leads that fail the alert requirements to review, with the reason."""

    lead_id: str
    route: Route
    temperature: Temperature
    at_ms: int
    reason: str
    message_id: str | None
    score_total: float
    scores_by_group: Mapping[str, float]
    rule: str | None = None  # the trigger or threshold rule that asked for an alert (review)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"output": "routing", "lead_id": self.lead_id, "route": self.route,
                "temperature": self.temperature, "at_ms": self.at_ms, "reason": self.reason,
                "message_id": self.message_id, "score_total": self.score_total,
                "scores_by_group": dict(self.scores_by_group), "rule": self.rule}


#: The stages whose moves are attributed to the lead's touches.
AttributedStage = Literal["mql", "sql", "opportunity", "customer"]
ATTRIBUTED_STAGES: frozenset[str] = frozenset(get_args(AttributedStage))


@dataclass(frozen=True, slots=True)
class Attribution:
    """A move to an attributed stage and the touches that earned it, weighted per model.

    `credits` is (model, one weight per touch of `touches`); `amount` is the deal amount
    the CRM event carried (pipeline for an opportunity, revenue for a deal won), and
    `amount_issue` why an amount that was given is not used.
    """

    lead_id: str
    stage: str
    from_stage: str
    at_ms: int
    cause_rule: str
    cause_message_id: str | None
    touches: tuple[Touch, ...]
    credits: tuple[tuple[str, tuple[float, ...]], ...]
    amount: float | None = None
    currency: str | None = None
    amount_issue: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"output": "attribution", "lead_id": self.lead_id, "stage": self.stage,
                "from_stage": self.from_stage, "at_ms": self.at_ms,
                "cause_rule": self.cause_rule, "cause_message_id": self.cause_message_id,
                "touches": [t.to_list() for t in self.touches],
                "credits": {m: list(ws) for m, ws in self.credits},
                "amount": self.amount, "currency": self.currency,
                "amount_issue": self.amount_issue}


NurtureAction = Literal["enroll", "exit"]
#: Why a lead enters a nurture track (`warm`: crossed the mql line without an alert) or
#: leaves it; the one list the core, the wire model and the schema use.
NurtureReason = Literal["warm", "recycled", "sales_alerted", "sales_accepted", "qualified",
                        "opportunity_opened", "customer", "disqualified", "unsubscribed"]
NURTURE_REASONS: tuple[str, ...] = get_args(NurtureReason)


@dataclass(frozen=True, slots=True)
class NurtureChange:
    """A lead enters or leaves marketing's nurture track, and why (`detail`: the cause)."""

    lead_id: str
    action: NurtureAction
    reason: NurtureReason
    stage: str
    at_ms: int
    message_id: str | None
    detail: str | None = None
    interest: str | None = None  # enroll: the rule that earned the lead most points

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"output": "nurture", "lead_id": self.lead_id, "action": self.action,
                "reason": self.reason, "stage": self.stage, "at_ms": self.at_ms,
                "message_id": self.message_id, "detail": self.detail,
                "interest": self.interest}


#: What changed a score: a matching event rule, a trait rule (fit, when traits or the
#: rules change), or decay on inactivity (`rule` is then "decay").
ChangeKind = Literal["event", "fit", "decay"]
CHANGE_KINDS: tuple[str, ...] = get_args(ChangeKind)


@dataclass(frozen=True, slots=True)
class ScoreChange:
    """One change of one group score: the score ledger's entry.

    `fit`, `engagement`, `product` and `total` are the scores right after this change (an
    event that hits two rules gives two changes, the second one's scores include both).
    `message_id` is the event being scored (for decay: the event whose arrival decayed the
    lead; None when the decay timer did) and `at_ms` its event time.
    """

    lead_id: str
    kind: ChangeKind
    rule: str
    group: str
    delta: float
    fit: float
    engagement: float
    product: float
    total: float
    at_ms: int
    message_id: str | None

    def to_row(self) -> list[Any]:
        """The compact form a lead state keeps (the lead id is the state's)."""
        return [self.kind, self.rule, self.group, self.delta, self.fit, self.engagement,
                self.product, self.total, self.at_ms, self.message_id]

    @classmethod
    def from_row(cls, lead_id: str, row: Any) -> ScoreChange:
        """Reverse `to_row`."""
        kind, rule, group, delta, fit, eng, prod, total, at_ms, mid = row
        # Through the slot setters: a stored lead holds up to MAX_CHANGES of these, rebuilt
        # on every read of the lead, and the frozen `__init__` cost more than the rest.
        return make_change(lead_id, kind, rule, group, float(delta), float(fit), float(eng),
                           float(prod), float(total), at_ms, mid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, scores rounded for display."""
        return {"output": "score_change", "lead_id": self.lead_id, "kind": self.kind,
                "rule": self.rule, "group": self.group, "delta": round(self.delta, 4),
                "scores": {"total": round(self.total, 2), "fit": round(self.fit, 2),
                           "engagement": round(self.engagement, 2),
                           "product": round(self.product, 2)},
                "at_ms": self.at_ms, "message_id": self.message_id}


_CHANGE_SET = tuple(getattr(ScoreChange, f).__set__ for f in (
    "lead_id", "kind", "rule", "group", "delta", "fit", "engagement", "product", "total",
    "at_ms", "message_id"))


def make_change(lead_id: str, kind: ChangeKind, rule: str, group: str, delta: float,
                fit: float, engagement: float, product: float, total: float, at_ms: int,
                message_id: str | None) -> ScoreChange:
    """`ScoreChange(...)` without the frozen `__init__`'s per-field `object.__setattr__`: the
    engine makes one per rule hit with the ledger on (same idea as `state.make_state`)."""
    c = object.__new__(ScoreChange)
    st = _CHANGE_SET
    st[0](c, lead_id)
    st[1](c, kind)
    st[2](c, rule)
    st[3](c, group)
    st[4](c, delta)
    st[5](c, fit)
    st[6](c, engagement)
    st[7](c, product)
    st[8](c, total)
    st[9](c, at_ms)
    st[10](c, message_id)
    return c


Output = (StageMove | MoveRefused | AlertTrigger | RoutingDecision | Attribution
          | NurtureChange | ScoreChange)
