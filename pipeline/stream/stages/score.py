"""Score: run the core over a batch of a partition's leads (their events, the decay timer's
ticks and the owners the assign step chose); stage changes, score changes (the ledger, when
on) and hand-offs go to their topics, alerts and acknowledgements to the assign topic, one
lead table write per lead."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.core.attribution import by_channel
from pipeline.core.engine import apply_batch, tick
from pipeline.core.event import Event
from pipeline.core.outputs import (
    AlertTrigger,
    Attribution,
    MoveRefused,
    NurtureChange,
    RoutingDecision,
    ScoreChange,
    StageMove,
)
from pipeline.core.routing import RoutingRules, choose_team, email_domain
from pipeline.core.rules import CompiledRules, first_trait
from pipeline.core.stages import ACK_EVENTS, DECAYS_TO_RECYCLED
from pipeline.core.state import with_owner
from pipeline.models.outputs import (
    LeadAttribution,
    NurtureMessage,
    RoutingAlert,
    StageChange,
    TopReason,
)
from pipeline.models.timefmt import iso_offset, iso_z
from pipeline.settings import Topics
from pipeline.stream.codec import (
    AckCommand,
    AlertCommand,
    AssignCommand,
    LeadsLine,
    OwnerUpdate,
    TickRequest,
    encode_assign,
    encode_tick,
    may_hold,
    stage_marks,
)
from pipeline.stream.dedup import SeenWindow
from pipeline.stream.produce import Send
from pipeline.stream.stages.records import Destinations, LeadRecord, Route, envelopes

if TYPE_CHECKING:  # the stages count through it; importing it pulls in the web server
    from pipeline.metrics.registry import Metrics


@dataclass(slots=True)
class ScoreResult:
    """Core outputs of a batch (in order), lead table writes, and duplicates dropped."""

    outputs: list[Any] = field(default_factory=list)
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0


@dataclass(slots=True)
class _Scored:
    outputs: list[Any] = field(default_factory=list)
    records: dict[str, LeadRecord] = field(default_factory=dict)  # the batch's writes
    duplicates: int = 0


#: Most messageIds a lead's dedup window keeps (settings.dedup_retention_s bounds it in time).
SEEN_CAP = 5000


def score_batch(
    events: Sequence[Event],
    get: Callable[[str], Mapping[str, Any] | None],
    rules: CompiledRules,
    *,
    dedup_retention_ms: int,
    ticks: Mapping[str, int] | None = None,
    owners: Mapping[str, OwnerUpdate] | None = None,
    ledger: bool = False,
) -> ScoreResult:
    """Run the core over a batch, per lead in arrival order; one table write per lead.

    `get` reads a stored lead record (`LeadRecord.to_stored` form). `ticks` maps a lead to
    a time (ms) to run `tick` at after its events: the decay timer's request for
    time-driven moves of leads that send nothing. `owners` maps a lead to the owner, team
    and alert the assign step chose: written to the lead's state.
    """
    res = _score(events, stored_records(get), rules, dedup_retention_ms, ticks or {},
                 owners or {}, ledger)
    return ScoreResult(res.outputs, {k: r.to_stored() for k, r in res.records.items()},
                       res.duplicates)


#: Reads a lead's record from the leads table (None: the table has none).
RecordReader = Callable[[str], LeadRecord | None]


def stored_records(get: Callable[[str], Mapping[str, Any] | None]) -> RecordReader:
    """A reader of lead records over a table of stored (`LeadRecord.to_stored`) dicts."""
    def read(lead: str) -> LeadRecord | None:
        stored = get(lead)
        return None if stored is None else LeadRecord.from_stored(stored)
    return read


def _score(
    events: Sequence[Event],
    get: RecordReader,
    rules: CompiledRules,
    dedup_retention_ms: int,
    ticks: Mapping[str, int],
    owners: Mapping[str, OwnerUpdate],
    ledger: bool,
) -> _Scored:
    by_lead: dict[str, list[Event]] = {}
    for e in events:
        by_lead.setdefault(e.lead_id, []).append(e)
    out = _Scored()
    for lead in ticks:
        by_lead.setdefault(lead, [])
    for lead, evs in by_lead.items():
        known = get(lead)
        tick_at = ticks.get(lead)
        if not evs:  # a tick alone
            if known is None or tick_at is None:
                continue
            rec = known
            res = tick(rec.state, tick_at, rules, ledger=ledger)
            if res.outputs or res.state.hot != rec.state.hot:  # a move, or a hot lead cooled
                out.outputs.extend(res.outputs)
                out.records[lead] = replace(rec, state=res.state)
            continue
        window = SeenWindow(known.seen if known is not None else None,
                            retention_ms=dedup_retention_ms)
        fresh = [e for e in evs if window.add(e.message_id, e.timestamp_ms)]
        out.duplicates += len(evs) - len(fresh)
        if not fresh:
            continue
        res = apply_batch(known.state if known is not None else None, fresh, rules,
                          ledger=ledger)
        out.outputs.extend(res.outputs)
        if tick_at is not None:
            res = tick(res.state, tick_at, rules, ledger=ledger)
            out.outputs.extend(res.outputs)
        out.records[lead] = LeadRecord(res.state, window.to_dict(cap=SEEN_CAP),
                                       known.route if known is not None else None)
    for lead, own in owners.items():
        known = out.records.get(lead)
        if known is None:
            known = get(lead)
            if known is None:
                continue  # an owner for a lead this table never held: nothing to attach it to
        out.records[lead] = LeadRecord(with_owner(known.state, own.owner, own.team),
                                       known.seen, Route(own.team, own.alert_id))
    return out


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


@dataclass(frozen=True, slots=True)
class CountedMove:
    """A stage move (or refusal) as the metrics count it."""

    from_stage: str
    to_stage: str
    refused: bool
    cause: str | None  # the move's cause rule
    detail: str | None  # e.g. the reason sales gave with a rejection
    team: str | None  # the team owning the lead (None: no team yet)


@dataclass(slots=True)
class Plan:
    """What the score stage sends: (topic, key, value) triples and assignment commands."""

    sends: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    assign: list[tuple[str, AssignCommand]] = field(default_factory=list)  # team, command
    alerts: list[tuple[str, str]] = field(default_factory=list)  # team, kind (for metrics)
    moves: list[CountedMove] = field(default_factory=list)  # for metrics
    attributions: list[Attribution] = field(default_factory=list)  # for metrics by channel


def plan(
    outputs: Sequence[object],
    traits_of: Mapping[str, Mapping[str, Any]],
    events: Sequence[Event],
    routes: Mapping[str, Route],
    routing: RoutingRules,
    topics: Topics,
    *,
    free_mail: frozenset[str],
    owners_of: Mapping[str, str | None] | None = None,
    rules_version: str | None = None,
    teams_of: Mapping[str, str | None] | None = None,
) -> Plan:
    """Map one batch's core outputs (and acknowledgement events) to messages.

    `traits_of` is read for the leads with an alert or hand-off, `routes` for the leads with
    an acknowledgement event (`plan_scored` looks up just those); `owners_of` gives the
    lead's current owner, for an alert that updates an earlier one, and `teams_of` the team
    owning a lead that moved, for the moves by team.
    """
    p = Plan()
    teams = teams_of or {}
    for o in outputs:
        if type(o) is ScoreChange:  # the most frequent output when the ledger is on
            p.sends.append((topics.score_changes, o.lead_id.encode(),
                            orjson.dumps(score_change_body(o, rules_version))))
        elif isinstance(o, StageMove):
            msg = StageChange(
                lead_id=o.lead_id, from_stage=o.from_stage, to_stage=o.to_stage,
                status="applied", reason=None, at=iso_offset(o.at_ms), at_ms=o.at_ms,
                cause={"rule": o.cause_rule, "message_id": o.cause_message_id},
                scores=_scores(o.score_total, o.scores_by_group), rules_version=rules_version,
            )
            p.sends.append((topics.stage_changes, o.lead_id.encode(), msg.to_bytes()))
            p.moves.append(CountedMove(o.from_stage, o.to_stage, False, o.cause_rule, o.detail,
                                       teams.get(o.lead_id)))
        elif isinstance(o, MoveRefused):
            msg = StageChange(
                lead_id=o.lead_id, from_stage=o.from_stage, to_stage=o.to_stage,
                status="refused", reason=o.reason, at=iso_offset(o.at_ms), at_ms=o.at_ms,
                cause={"rule": None, "message_id": o.cause_message_id}, scores=None,
                rules_version=rules_version,
            )
            p.sends.append((topics.stage_changes, o.lead_id.encode(), msg.to_bytes()))
            p.moves.append(CountedMove(o.from_stage, o.to_stage, True, None, None,
                                       teams.get(o.lead_id)))
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
            p.assign.append((team.name, AlertCommand(body)))
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
            p.assign.append((str(route.team), AckCommand(
                e.lead_id, aid if isinstance(aid, str) else None, e.timestamp_ms, e.name)))
    return p


def score_change_body(c: ScoreChange, rules_version: str | None) -> dict[str, Any]:
    """The wire form of a score change (`models.outputs.ScoreChangeMessage`), built as a
    plain dict: there is one per scoring rule hit, and a model per change costs more than
    scoring the event (tests/stream/stages/test_score.py validates it against the model)."""
    return {"schema_version": 1, "rules_version": rules_version,
            "change_id": f"{c.lead_id}:{c.rule}:{c.group}:{c.message_id or c.at_ms}",
            "lead_id": c.lead_id, "kind": c.kind, "rule": c.rule, "group": c.group,
            "delta": round(c.delta, 4),
            "scores": {"total": round(c.total, 2), "fit": round(c.fit, 2),
                       "engagement": round(c.engagement, 2), "product": round(c.product, 2)},
            "at": iso_z(c.at_ms), "at_ms": c.at_ms, "message_id": c.message_id}


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
    records: Mapping[str, LeadRecord],
    events: Sequence[Event],
    get: RecordReader,
    routing: RoutingRules,
    topics: Topics,
    *,
    free_mail: frozenset[str],
    rules_version: str | None = None,
) -> Plan:
    """`plan` for a score batch: traits and routes read from its lead records.

    Only the few leads that are alerted, handed off or acknowledged are looked up: reading
    the traits of every written lead was a measurable cost per event (README). `get` reads
    the record of a lead the batch did not write.
    """
    routed = {o.lead_id for o in outputs if isinstance(o, AlertTrigger | RoutingDecision)}
    traits = {lead: records[lead].traits() for lead in routed if lead in records}
    owners = {lead: records[lead].state.owner for lead in routed if lead in records}
    routes: dict[str, Route] = {}
    for lead in {e.lead_id for e in events if e.type == "track" and e.name in ACK_EVENTS}:
        rec = records.get(lead)
        if rec is None:
            rec = get(lead)
        route = rec.route if rec is not None else None
        if route is not None:
            routes[lead] = route
    # the lead's team after the batch: an owner update in the same batch also names its moves
    teams = {o.lead_id: records[o.lead_id].state.team for o in outputs
             if isinstance(o, StageMove | MoveRefused) and o.lead_id in records}
    return plan(outputs, traits, events, routes, routing, topics, free_mail=free_mail,
                owners_of=owners, rules_version=rules_version, teams_of=teams)


def rec_traits(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored lead record's latest traits (from identify calls), for routing."""
    return LeadRecord.from_stored(record).traits()


@dataclass(frozen=True, slots=True)
class Scored:
    """A score batch's sends, lead table writes and what to count."""

    sends: tuple[Send, ...]
    writes: Mapping[str, LeadRecord]  # the leads table's codec encodes them
    duplicates: int
    moves: tuple[CountedMove, ...]
    #: event time (ms) of every event scored, for the processing lag
    event_ms: tuple[int, ...]
    #: the moves' attributions, for the metrics by channel
    attributions: tuple[Attribution, ...] = ()

    def observe(self, metrics: Metrics, now_s: float) -> None:
        for _ in range(self.duplicates):
            metrics.duplicate()
        for m in self.moves:
            metrics.stage_move(m.from_stage, m.to_stage, refused=m.refused, cause=m.cause,
                               detail=m.detail, team=m.team)
        for att in self.attributions:
            metrics.attribution(att)
        metrics.processed(*(now_s - ms / 1000 for ms in self.event_ms))


def score(
    lines: Sequence[LeadsLine],
    get: RecordReader,
    rules: CompiledRules,
    dest: Destinations,
    *,
    dedup_retention_ms: int,
    routed_ms: int,
) -> Scored:
    """Score a batch of leads-topic lines (events, tick requests, owner updates).

    `get` reads a lead's record; the records written come back as `writes`, for the
    leads table to encode (`LeadRecord.encode`). `routed_ms` is when the batch's alerts
    are routed: their SLA clocks start there (see `assign.assign_batch`).
    """
    events: list[Event] = []
    ticks: dict[str, int] = {}
    owners: dict[str, OwnerUpdate] = {}
    for line in lines:
        if isinstance(line, OwnerUpdate):
            owners[line.lead_id] = line
        elif isinstance(line, TickRequest):
            ticks[line.lead_id] = line.at_ms
        else:
            events.append(line)
    res = _score(events, get, rules, dedup_retention_ms, ticks, owners, dest.score_ledger)
    records = res.records
    p = plan_scored(res.outputs, records, events, get, rules.routing, dest.topics,
                    free_mail=rules.free_email, rules_version=dest.rules_version)
    sends = [Send(name, key, value, None) for name, key, value in p.sends]
    for team, cmd in p.assign:
        if isinstance(cmd, AlertCommand):
            cmd = replace(cmd, routed_ms=routed_ms)
            lead = cmd.alert["lead_id"]
            if lead in records:  # remember the route so acknowledgements find the team
                records[lead] = replace(records[lead],
                                        route=Route(team, cmd.alert["alert_id"]))
        sends.append(Send(dest.assign, team.encode(), encode_assign(cmd), None))
    return Scored(tuple(sends), records, res.duplicates, tuple(p.moves),
                  tuple(e.timestamp_ms for e in events), tuple(p.attributions))


# The stages a quiet lead can decay out of, as the stored records spell them.
_DECAY_MARKS = stage_marks(DECAYS_TO_RECYCLED)


def tick_due(record: bytes, now_ms: int, rules: CompiledRules) -> bool:
    """Whether a stored lead record would move (or a hot lead cool) if ticked at `now_ms`:
    the decay timer's dry run, so that only those leads get a tick request."""
    if not may_hold(record, _DECAY_MARKS):
        return False
    decoded = orjson.loads(record)
    if decoded is None:
        return False
    state = LeadRecord.from_stored(decoded).state
    if state.stage not in DECAYS_TO_RECYCLED and not state.hot:
        return False
    res = tick(state, now_ms, rules)
    return bool(res.outputs) or res.state.hot != state.hot


def tick_requests(due: Sequence[bytes], now_ms: int, dest: Destinations) -> tuple[Send, ...]:
    """Tick requests for the leads (table keys) `due`, each on its lead's partition."""
    return tuple(envelopes(dest.leads,
                           ((key, encode_tick(TickRequest(key.decode(), now_ms)))
                            for key in due), dest.partitions))
