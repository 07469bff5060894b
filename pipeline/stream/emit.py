"""From core outputs to wire messages: which topic, which key, which JSON body.

Pure functions (no Faust): the score agent calls `plan` with a batch's core outputs and
gets back the messages to send plus the assignment requests for the assign agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline import deadletters
from pipeline.core.attribution import by_channel
from pipeline.core.event import Event
from pipeline.core.identity import identity_key
from pipeline.core.outputs import (
    AlertTrigger,
    Attribution,
    MoveRefused,
    NurtureChange,
    RoutingDecision,
    StageMove,
)
from pipeline.core.routing import RoutingRules, choose_team, email_domain
from pipeline.core.rules import first_trait
from pipeline.core.stages import ACK_EVENTS
from pipeline.models.outputs import (
    LeadAttribution,
    NurtureMessage,
    RoutingAlert,
    StageChange,
    TopReason,
)
from pipeline.models.timefmt import iso_offset
from pipeline.settings import Topics
from pipeline.stream.steps import Rejected, rec_traits


def identity_key_bytes(e: Event) -> bytes:
    """Kafka key of an event on the identity topic."""
    return identity_key(e).encode()


def dead_letter(rej: Rejected, *, now_ms: int | None = None,
                rules_version: str | None = None) -> bytes:
    """The dead-letter message: reason, detail, the original bytes and where they came from."""
    m = rej.message
    return deadletters.dead_letter(
        reason=rej.reason, detail=rej.detail, source_topic=m.topic, partition=m.partition,
        offset=m.offset, timestamp_ms=m.timestamp_ms, key=m.key, value=m.value or b"",
        received_ms=now_ms if now_ms is not None else m.timestamp_ms, headers=m.headers,
        rules_version=rules_version,
    ).to_bytes()


def _scores(total: float, by_group: Mapping[str, float]) -> dict[str, float]:
    return {"total": total, "fit": by_group.get("fit", 0.0),
            "engagement": by_group.get("engagement", 0.0),
            "product": by_group.get("product", 0.0)}


def _reasons(lines: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            out.append(TopReason.parse(line).to_dict())
        except ValueError:  # a line the wire format does not know: keep the rule name
            out.append({"rule": line, "points": 0.0, "count": None})
    return out


def _lead_summary(traits: Mapping[str, Any]) -> dict[str, Any]:
    company = traits.get("company")
    name = company.get("name") if isinstance(company, Mapping) else company
    employees = first_trait(traits, ("company.employee_count", "employees"))
    email = traits.get("email")
    return {k: v for k, v in {
        "email": email if isinstance(email, str) else None,
        "email_domain": email.rsplit("@", 1)[1].lower()
        if isinstance(email, str) and "@" in email else None,
        "employees": employees if isinstance(employees, int) and not isinstance(employees, bool)
        else None,
        "name": " ".join(
            str(traits[k]) for k in ("firstName", "lastName") if traits.get(k)) or None,
        "title": _text(traits.get("title")), "company": _text(name),
        "country": _text(first_trait(traits, ("address.country", "country"))),
    }.items() if v is not None}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


@dataclass(slots=True)
class Plan:
    """What the score stage sends: (topic, key, value) triples and assignment commands."""

    sends: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    assign: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # team, command
    alerts: list[tuple[str, str]] = field(default_factory=list)  # team, kind (for metrics)
    # from, to, refused, cause rule, detail (for metrics)
    moves: list[tuple[str, str, bool, str | None, str | None]] = field(default_factory=list)
    attributions: list[Attribution] = field(default_factory=list)  # for metrics by channel


def plan(
    outputs: Sequence[object],
    traits_of: Mapping[str, Mapping[str, Any]],
    events: Sequence[Event],
    routes: Mapping[str, Mapping[str, Any]],
    routing: RoutingRules,
    topics: Topics,
    *,
    free_mail: frozenset[str],
    owners_of: Mapping[str, str | None] | None = None,
    rules_version: str | None = None,
) -> Plan:
    """Map one batch's core outputs (and acknowledgement events) to messages.

    `traits_of` is read for the leads with an alert or hand-off, `routes` for the leads with
    an acknowledgement event (`plan_scored` looks up just those); `owners_of` gives the
    lead's current owner, for an alert that updates an earlier one.
    """
    p = Plan()
    for o in outputs:
        if isinstance(o, StageMove):
            msg = StageChange(
                lead_id=o.lead_id, from_stage=o.from_stage, to_stage=o.to_stage,
                status="applied", reason=None, at=iso_offset(o.at_ms), at_ms=o.at_ms,
                cause={"rule": o.cause_rule, "message_id": o.cause_message_id},
                scores=_scores(o.score_total, o.scores_by_group), rules_version=rules_version,
            )
            p.sends.append((topics.stage_changes, o.lead_id.encode(), msg.to_bytes()))
            p.moves.append((o.from_stage, o.to_stage, False, o.cause_rule, o.detail))
        elif isinstance(o, MoveRefused):
            msg = StageChange(
                lead_id=o.lead_id, from_stage=o.from_stage, to_stage=o.to_stage,
                status="refused", reason=o.reason, at=iso_offset(o.at_ms), at_ms=o.at_ms,
                cause={"rule": None, "message_id": o.cause_message_id}, scores=None,
                rules_version=rules_version,
            )
            p.sends.append((topics.stage_changes, o.lead_id.encode(), msg.to_bytes()))
            p.moves.append((o.from_stage, o.to_stage, True, None, None))
        elif isinstance(o, AlertTrigger):
            traits = traits_of.get(o.lead_id, {})
            team, why = choose_team(routing, traits)
            body: dict[str, Any] = {
                "alert_id": o.alert_id, "lead_id": o.lead_id, "kind": o.kind,
                "temperature": o.temperature, "triggered_at": iso_offset(o.at_ms),
                "triggered_ms": o.at_ms,
                "trigger": {"rule": o.rule, "message_id": o.message_id},
                "updates": o.updates,
                "scores": _scores(o.score_total, o.scores_by_group),
                "top_reasons": _reasons(o.top_reasons),
                "lead": _lead_summary(traits),
                "domain": email_domain(traits, free_mail),
                "team_reason": why,
                "current_owner": (owners_of or {}).get(o.lead_id) if o.updates else None,
                "rules_version": rules_version,
            }
            p.assign.append((team.name, {"op": "alert", "alert": body}))
            p.alerts.append((team.name, o.kind))
        elif isinstance(o, RoutingDecision):
            traits = traits_of.get(o.lead_id, {})
            topic = {"nurture": topics.nurture, "recycle": topics.recycle,
                     "review": topics.review}[o.route]
            review = o.route == "review"
            handoff = RoutingAlert(
                alert_id=f"{o.lead_id}:{o.route}:{o.message_id or o.at_ms}",
                lead_id=o.lead_id, team=o.route, kind=o.route, temperature=o.temperature,
                owner=None, assignment=None, triggered_at=iso_offset(o.at_ms),
                triggered_ms=o.at_ms, sla_seconds=None, due_at=None,
                trigger={"rule": o.rule if review else o.reason, "message_id": o.message_id},
                scores=_scores(o.score_total, o.scores_by_group),
                lead=_lead_summary(traits),
                reason=o.reason if review else None, rules_version=rules_version,
            )
            p.sends.append((topic, o.lead_id.encode(), handoff.to_bytes()))
            p.alerts.append((o.route, o.route))
        elif isinstance(o, Attribution):
            p.sends.append((topics.attribution, o.lead_id.encode(),
                            attribution_message(o, rules_version).to_bytes()))
            p.attributions.append(o)
        elif isinstance(o, NurtureChange):
            p.sends.append((topics.nurture_changes, o.lead_id.encode(), NurtureMessage(
                nurture_id=f"{o.lead_id}:{o.action}:{o.message_id or o.at_ms}",
                lead_id=o.lead_id, action=o.action, reason=o.reason, stage=o.stage,
                at=iso_offset(o.at_ms), at_ms=o.at_ms,
                cause={"rule": o.detail, "message_id": o.message_id}, interest=o.interest,
                rules_version=rules_version).to_bytes()))
    for e in events:
        if e.type == "track" and e.name in ACK_EVENTS:
            route = routes.get(e.lead_id)
            if route is None:
                continue
            aid = e.properties.get("alert_id")
            p.assign.append((str(route["team"]), {
                "op": "ack", "lead_id": e.lead_id, "alert_id": aid if isinstance(aid, str)
                else None, "at_ms": e.timestamp_ms, "event": e.name}))
    return p


def attribution_message(a: Attribution, rules_version: str | None) -> LeadAttribution:
    """The wire form of an attribution: touches, credit per model and channel, the deal."""
    deal = None
    if a.stage in ("opportunity", "customer"):
        deal = {"kind": "pipeline" if a.stage == "opportunity" else "revenue",
                "amount": a.amount, "currency": a.currency, "amount_issue": a.amount_issue}
    return LeadAttribution(
        attribution_id=f"{a.lead_id}:{a.stage}:{a.cause_message_id or a.at_ms}",
        lead_id=a.lead_id, stage=a.stage, from_stage=a.from_stage,
        at=iso_offset(a.at_ms), at_ms=a.at_ms,
        cause={"rule": a.cause_rule, "message_id": a.cause_message_id},
        touches=[{"channel": t.channel, "source": t.source, "medium": t.medium,
                  "campaign": t.campaign, "referrer": t.referrer, "at": iso_offset(t.at_ms),
                  "at_ms": t.at_ms, "message_id": t.message_id, "count": t.count,
                  "marks": list(t.marks)} for t in a.touches],
        credits=[{"model": m, "weights": list(ws), "channels": by_channel(a.touches, ws)}
                 for m, ws in a.credits],
        deal=deal, rules_version=rules_version,
    )


def plan_scored(
    outputs: Sequence[object],
    writes: Mapping[str, Mapping[str, Any]],
    events: Sequence[Event],
    get: Callable[[str], Mapping[str, Any] | None],
    routing: RoutingRules,
    topics: Topics,
    *,
    free_mail: frozenset[str],
    rules_version: str | None = None,
) -> Plan:
    """`plan` for a score batch: traits and routes read from its lead records.

    Only the few leads that are alerted, handed off or acknowledged are looked up: reading
    the traits of every written lead was a measurable cost per event (README). `get` reads
    a lead the batch did not write.
    """
    routed = {o.lead_id for o in outputs if isinstance(o, AlertTrigger | RoutingDecision)}
    traits = {lead: rec_traits(writes[lead]) for lead in routed if lead in writes}
    owners = {lead: writes[lead]["s"].get("owner") for lead in routed if lead in writes}
    routes: dict[str, Mapping[str, Any]] = {}
    for lead in {e.lead_id for e in events if e.type == "track" and e.name in ACK_EVENTS}:
        rec = writes.get(lead) or get(lead)
        if rec is not None and rec.get("route"):
            routes[lead] = rec["route"]
    return plan(outputs, traits, events, routes, routing, topics, free_mail=free_mail,
                owners_of=owners, rules_version=rules_version)
