"""Assign: per team, choose owners for hot leads' alerts, stop SLA clocks on
acknowledgements and escalate lapsed alerts; alerts go to the team's routing topic, owners
back to the lead (leads topic), assignments to the CRM topic, one team table write per team."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipeline.core.calendar import closed_until, sla_due
from pipeline.core.routing import RoutingRules, Team, TeamState, assign
from pipeline.models.outputs import Escalation, LeadAssignment, RoutingAlert
from pipeline.models.timefmt import iso_offset
from pipeline.stream.codec import (
    AckCommand,
    AlertCommand,
    AssignCommand,
    OwnerUpdate,
    SlaTick,
    encode_assign,
    encode_owner,
)
from pipeline.stream.produce import Send
from pipeline.stream.stages.records import (
    Destinations,
    PendingAlert,
    QueuedAlert,
    TeamRecord,
    envelopes,
)

if TYPE_CHECKING:  # the stages count through it; importing it pulls in the web server
    from pipeline.metrics.registry import Metrics

# -- assignment: one record per team on the <app>-assign topic --------------------------
# Commands (`codec.AssignCommand`, key = team name): an alert to assign (from the score
# stage), an acknowledgement, or the SLA timer's tick. The team's record: `TeamRecord`.


@dataclass(frozen=True, slots=True)
class Emitted:
    """One message to send: a topic role ('team', 'escalations'), key and JSON body."""

    role: str
    team: str
    key: str
    body: dict[str, Any]


@dataclass(slots=True)
class AssignResult:
    """Messages to send, team table writes, and measurements for the metrics."""

    emitted: list[Emitted] = field(default_factory=list)
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    speed_to_lead: list[tuple[str, str, float]] = field(default_factory=list)  # team, kind, s
    breaches: list[tuple[str, str]] = field(default_factory=list)  # team, kind


# Alert fields the score stage adds for the assign step only: never on the routing topic.
_INTERNAL = ("domain", "team_reason", "current_owner")
# Unowned alerts kept per team for the queue view; beyond this the oldest are dropped
# (and counted in the record) so that a team with no reps cannot grow its record forever.
QUEUE_CAP = 500


def _body(team: Team, alert: Mapping[str, Any], owner: str | None, reason: str,
          skipped: Sequence[str], excluded: frozenset[str], sla_s: int | None,
          due_ms: int | None) -> dict[str, Any]:
    body = {k: v for k, v in alert.items() if k not in _INTERNAL}
    body["team"] = team.name
    body["owner"] = owner
    body["assignment"] = {"reason": reason, "skipped": list(skipped), "excluded": sorted(excluded)}
    body["sla_seconds"] = sla_s
    body["due_at"] = iso_offset(due_ms) if due_ms is not None else None
    return body


def _place(
    team: Team, st: TeamState, alert: Mapping[str, Any], sla_s: int | None, at_ms: int,
    exclude: frozenset[str],
) -> tuple[TeamState, dict[str, Any]]:
    """Pick an owner at routing time `at_ms`; the SLA runs from then."""
    st, a = assign(team, st, domain=alert.get("domain"), at_ms=at_ms, exclude=exclude)
    team_reason = alert.get("team_reason")
    reason = f"team {team.name} ({team_reason}); {a.reason}" if team_reason else a.reason
    due = sla_due(team, at_ms, sla_s * 1000) if sla_s else None
    return st, _body(team, alert, a.owner, reason, a.skipped, exclude, sla_s, due)


def _unowned_why(body: Mapping[str, Any]) -> str:
    a = body["assignment"]
    return f"{a['reason']} ({'; '.join(a['skipped'])})" if a["skipped"] else str(a["reason"])


@dataclass(slots=True)
class _Team:
    """A team's record while a batch works on it (`TeamRecord` before and after)."""

    state: TeamState
    pending: dict[str, PendingAlert]
    queue: dict[str, QueuedAlert]
    dropped: int

    @classmethod
    def of(cls, rec: TeamRecord) -> _Team:
        return cls(rec.state, dict(rec.pending), dict(rec.queue), rec.queue_dropped)

    def record(self) -> TeamRecord:
        return TeamRecord(self.state, dict(self.pending), dict(self.queue), self.dropped)

    def enqueue(self, body: Mapping[str, Any], at_ms: int, why: str) -> None:
        """Keep an alert that found no owner in the queue, with why, until acknowledged."""
        aid = body["alert_id"]
        self.queue[aid] = QueuedAlert(aid, body["lead_id"], body["kind"], iso_offset(at_ms), why)
        while len(self.queue) > QUEUE_CAP:
            del self.queue[next(iter(self.queue))]
            self.dropped += 1


def _acks(key: str, lead: str, supersedes: Sequence[str], entry_lead: str,
          alert_id: str | None) -> bool:
    """Whether an acknowledgement (of `alert_id`, or of the lead's alerts when None) closes
    a pending or queued entry; acknowledging an alert also closes the update that replaced it."""
    if alert_id is None:
        return entry_lead == lead
    return key == alert_id or alert_id in supersedes


def _first_owner(t: _Team, team: Team, aid: str, alert: Mapping[str, Any], sla: int | None,
                 at_ms: int, supersedes: tuple[str, ...], out: AssignResult) -> None:
    """Give an alert its first owner at `at_ms` (or queue it, unowned, with why); its SLA
    runs from then, and an alert with no SLA is no longer pending."""
    t.state, body = _place(team, t.state, alert, sla, at_ms, frozenset())
    out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))
    if body["owner"] is None:
        t.enqueue(body, at_ms, _unowned_why(body))
    if sla:
        t.pending[aid] = PendingAlert(sla_due(team, at_ms, sla * 1000), alert,
                                      body["owner"], (), supersedes)
    else:
        t.pending.pop(aid, None)


def _alert(t: _Team, team: Team, cmd: AlertCommand, routing: RoutingRules,
           out: AssignResult) -> None:
    alert = dict(cmd.alert)
    aid = alert["alert_id"]
    if aid in t.pending or aid in t.queue:
        return  # a replayed request: already assigned
    sla = routing.sla_seconds(alert["kind"])
    at = int(alert["triggered_ms"])
    # The SLA runs from when the rep could first see the alert: a replayed or late
    # trigger (event time long past) must not escalate the moment it is routed.
    due_from = max(at, cmd.routed_ms or at)
    prior_id = alert.get("updates")
    prior = t.pending.pop(prior_id, None) if prior_id else None
    if prior_id:
        t.queue.pop(prior_id, None)
    supersedes = (prior_id, *(prior.supersedes if prior else ())) if prior_id else ()
    owner = prior.owner if prior else alert.get("current_owner")
    if prior_id and owner in {r.id for r in team.reps} and not (prior and prior.waiting):
        # The stricter alert for a lead a rep already has: an update of the first
        # one, to the same owner, due at the tighter of the two SLAs.
        due = sla_due(team, due_from, sla * 1000) if sla else None
        if prior is not None and due is not None:
            due = min(due, prior.due_ms)
        body = _body(team, alert, owner, f"update of alert {prior_id}: same owner, "
                     "the tighter SLA", (), frozenset(), sla, due)
        out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))
        if due is not None:
            t.pending[aid] = PendingAlert(due, alert, owner,
                                          prior.excluded if prior else (), supersedes)
        return
    opens = closed_until(team, due_from)
    if opens is not None:
        # Nobody at work: wait unowned in the team queue; the timer assigns it (and
        # starts its SLA) at the opening, so it never escalates to nobody.
        t.pending[aid] = PendingAlert(opens, alert, None, (), supersedes, waiting=True,
                                      reason=f"team closed until {iso_offset(opens)}",
                                      since=iso_offset(due_from))
        return
    _first_owner(t, team, aid, alert, sla, due_from, supersedes, out)


def _ack(t: _Team, team: Team, cmd: AckCommand, out: AssignResult) -> None:
    lead, aid = cmd.lead_id, cmd.alert_id
    for key in [k for k, p in t.pending.items()
                if _acks(k, lead, p.supersedes, p.lead_id, aid)]:
        p = t.pending.pop(key)
        seconds = max(0.0, (cmd.at_ms - int(p.alert["triggered_ms"])) / 1000)
        out.speed_to_lead.append((team.name, p.alert["kind"], seconds))
    for key in [k for k, q in t.queue.items() if _acks(k, lead, (), q.lead_id, aid)]:
        del t.queue[key]


def _tick(t: _Team, team: Team, now: int, routing: RoutingRules, out: AssignResult) -> None:
    for key in [k for k, p in t.pending.items() if p.due_ms <= now]:
        p = t.pending[key]
        alert = p.alert
        sla = routing.sla_seconds(alert["kind"]) or 0
        opens = closed_until(team, now)
        if opens is not None:  # lapsed at closing time: act when the team opens
            t.pending[key] = replace(p, due_ms=opens)
            continue
        if p.waiting:
            _first_owner(t, team, key, alert, sla, now, p.supersedes, out)
            continue
        excluded = frozenset([*p.excluded, *([p.owner] if p.owner else [])])
        t.state, body = _place(team, t.state, alert, sla, now, excluded)
        body["reassigned"] = True
        reason = f"not acknowledged within {sla}s"
        if body["owner"] is None:
            # Every rep had it (or none is available): escalate once, unowned, and
            # stop the timer; repeating it every SLA period would only be noise.
            # It stays in the team queue until someone acknowledges it.
            reason += f"; no rep of team {team.name} left to reassign to"
            body["sla_seconds"] = None
            body["due_at"] = None
            del t.pending[key]
            t.enqueue(body, now, reason)
        else:
            t.queue.pop(key, None)
            t.pending[key] = PendingAlert(sla_due(team, now, sla * 1000), alert,
                                          body["owner"], tuple(sorted(excluded)),
                                          p.supersedes)
        out.breaches.append((team.name, alert["kind"]))
        out.emitted.append(Emitted("escalations", team.name, alert["lead_id"], {
            "alert_id": key, "lead_id": alert["lead_id"], "team": team.name,
            "kind": alert["kind"], "from_owner": p.owner, "to_owner": body["owner"],
            "sla_seconds": sla, "triggered_at": iso_offset(int(alert["triggered_ms"])),
            "breached_at": iso_offset(now), "reason": reason,
            "rules_version": alert.get("rules_version"),
        }))
        out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))


def assign_batch(
    commands: Sequence[tuple[str, AssignCommand]],
    get: Callable[[str], Mapping[str, Any] | None],
    routing: RoutingRules,
) -> AssignResult:
    """Apply assignment commands per team in order; one table write per team."""
    teams = {t.name: t for t in routing.teams}
    out = AssignResult()
    working: dict[str, _Team] = {}
    for team_name, cmd in commands:
        team = teams.get(team_name)
        if team is None:  # the rules changed under a pending command: keep it visible
            team = routing.teams[-1]
        t = working.get(team.name)
        if t is None:
            t = working[team.name] = _Team.of(TeamRecord.from_stored(get(team.name)))
        if isinstance(cmd, AlertCommand):
            _alert(t, team, cmd, routing, out)
        elif isinstance(cmd, AckCommand):
            _ack(t, team, cmd, out)
        else:
            _tick(t, team, cmd.now_ms, routing, out)
    out.writes = {name: t.record().to_stored() for name, t in working.items()}
    out.emitted += _ownership([e for e in out.emitted if e.role == "team"])
    return out


def team_queue(team: str, stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A team's open work, as the queue view shows it: alerts waiting for the team to open,
    alerts no rep could take (and why), and owned alerts with their SLA due time."""
    record = TeamRecord.from_stored(stored)
    waiting: list[dict[str, Any]] = []
    owned: list[dict[str, Any]] = []
    for aid, p in record.pending.items():
        item = {"alert_id": aid, "lead_id": p.lead_id, "kind": p.alert["kind"],
                "due_at": iso_offset(p.due_ms)}
        if p.waiting:
            waiting.append({**item, "since": p.since, "reason": p.reason})
        elif p.owner:
            owned.append({**item, "owner": p.owner})
    unowned = [q.to_stored() for q in record.queue.values()]
    return {"team": team, "waiting": waiting, "unowned": unowned, "owned": owned,
            "unowned_dropped": record.queue_dropped}


def _ownership(placed: Sequence[Emitted]) -> list[Emitted]:
    """For every placed alert: the owner written back to the lead (role 'owner', on the
    leads topic) and the assignment a CRM sync consumes (role 'assignment')."""
    out: list[Emitted] = []
    for e in placed:
        b = e.body
        owner = {"owner": b["owner"], "team": b["team"], "alert_id": b["alert_id"]}
        out.append(Emitted("owner", e.team, e.key, owner))
        out.append(Emitted("assignment", e.team, e.key, {
            "lead_id": b["lead_id"], **owner, "kind": b["kind"],
            "reassigned": bool(b.get("reassigned")),
            "reason": (b.get("assignment") or {}).get("reason") or "",
            "at": iso_offset(int(b["triggered_ms"])), "due_at": b.get("due_at"),
            "rules_version": b.get("rules_version")}))
    return out


@dataclass(frozen=True, slots=True)
class Assigned:
    """An assign batch's sends, team table writes and what to count."""

    sends: tuple[Send, ...]
    writes: Mapping[str, Any]
    #: team, kind, triggered_ms of every alert sent to a team
    alerts: tuple[tuple[str, str, int], ...]
    breaches: tuple[tuple[str, str], ...]
    speed_to_lead: tuple[tuple[str, str, float], ...]

    def observe(self, metrics: Metrics, now_s: float) -> None:
        for team, kind, triggered_ms in self.alerts:
            metrics.alert(team, kind, max(0.0, now_s - triggered_ms / 1000))
        for team, kind in self.breaches:
            metrics.sla_breach(team, kind)
        for team, _kind, seconds in self.speed_to_lead:
            metrics.speed_to_lead(team, seconds)


def assign_stage(
    commands: Sequence[tuple[str, AssignCommand]],
    get: Callable[[str], Mapping[str, Any] | None],
    routing: RoutingRules,
    dest: Destinations,
) -> Assigned:
    """Apply a batch of (team, command) records (`assign_batch`) and say what to send."""
    res = assign_batch(commands, get, routing)
    topics = dest.topics
    sends = envelopes(dest.leads, (
        (o.key.encode(), encode_owner(OwnerUpdate(o.key, o.body["owner"], o.body["team"],
                                                  o.body["alert_id"])))
        for o in res.emitted if o.role == "owner"), dest.partitions)
    alerts: list[tuple[str, str, int]] = []
    for out in res.emitted:
        key = out.key.encode()
        if out.role == "owner":
            continue
        if out.role == "assignment":
            sends.append(Send(topics.assignments, key,
                              LeadAssignment.model_validate(out.body).to_bytes(), None))
        elif out.role == "escalations":
            sends.append(Send(topics.escalations, key,
                              Escalation.model_validate(out.body).to_bytes(), None))
        else:
            alerts.append((out.team, out.body["kind"], int(out.body["triggered_ms"])))
            sends.append(Send(topics.routing(out.team), key,
                              RoutingAlert.model_validate(out.body).to_bytes(), None))
    return Assigned(tuple(sends), res.writes, tuple(alerts), tuple(res.breaches),
                    tuple(res.speed_to_lead))


def sla_ticks(records: Iterable[tuple[bytes, Mapping[str, Any] | None]], now_ms: int,
              dest: Destinations) -> tuple[Send, ...]:
    """A tick command for each team whose record has a lapsed SLA (the SLA timer's requests:
    the team table changes only in the assign stage)."""
    tick = encode_assign(SlaTick(now_ms))
    return tuple(Send(dest.assign, team, tick, None) for team, record in records
                 if record is not None and TeamRecord.from_stored(record).overdue(now_ms))
