"""Assign: per team, choose owners for hot leads' alerts, stop SLA clocks on
acknowledgements and escalate lapsed alerts; alerts go to the team's routing topic, owners
back to the lead (leads topic), assignments to the CRM topic, one team table write per team."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.calendar import closed_until, sla_due
from pipeline.core.routing import RoutingRules, Team, TeamState, assign
from pipeline.models.outputs import Escalation, LeadAssignment, RoutingAlert
from pipeline.models.timefmt import iso_offset
from pipeline.stream.codec import OwnerUpdate, dumps, encode_owner
from pipeline.stream.produce import Send
from pipeline.stream.stages.records import Destinations, envelopes

if TYPE_CHECKING:  # the stages count through it; importing it pulls in the web server
    from pipeline.metrics.registry import Metrics

# -- assignment: one record per team on the <app>-assign topic --------------------------
#
# Commands (JSON, key = team name):
#   {"op": "alert", "alert": {...}}  a hot lead to assign (built by the score stage)
#   {"op": "ack", "lead_id": ..., "alert_id": ... | None, "at_ms": ..., "event": ...}
#   {"op": "tick", "now_ms": ...}    sent by a timer when an SLA may have lapsed
# Team record: {"state": TeamState.to_dict(), "pending": {alert_id: {...}}}


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
    team: Team, st: TeamState, alert: dict[str, Any], sla_s: int | None, at_ms: int,
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


def _queue(rec: dict[str, Any], body: Mapping[str, Any], at_ms: int, why: str) -> None:
    """Keep an alert that found no owner in the team's queue, with why, until acknowledged."""
    queue: dict[str, Any] = rec.setdefault("queue", {})
    queue[body["alert_id"]] = {
        "alert_id": body["alert_id"], "lead_id": body["lead_id"], "kind": body["kind"],
        "since": iso_offset(at_ms), "reason": why}
    while len(queue) > QUEUE_CAP:
        del queue[next(iter(queue))]
        rec["queue_dropped"] = int(rec.get("queue_dropped", 0)) + 1


def _acks(key: str, entry: Mapping[str, Any], lead: str, alert_id: str | None) -> bool:
    """Whether an acknowledgement (of `alert_id`, or of the lead's alerts when None) closes
    a pending or queued entry; acknowledging an alert also closes the update that replaced it."""
    if alert_id is None:
        entry_lead = entry["lead_id"] if "lead_id" in entry else entry["alert"]["lead_id"]
        return bool(entry_lead == lead)
    return key == alert_id or alert_id in entry.get("supersedes", ())


def assign_batch(
    commands: Sequence[tuple[str, Mapping[str, Any]]],
    get: Callable[[str], Mapping[str, Any] | None],
    routing: RoutingRules,
) -> AssignResult:
    """Apply assignment commands per team in order; one table write per team."""
    teams = {t.name: t for t in routing.teams}
    out = AssignResult()
    records: dict[str, dict[str, Any]] = {}
    for team_name, cmd in commands:
        team = teams.get(team_name)
        if team is None:  # the rules changed under a pending command: keep it visible
            team = routing.teams[-1]
        rec = records.get(team.name)
        if rec is None:
            stored = get(team.name)
            rec = {"state": TeamState().to_dict(), "pending": {}}
            if stored is not None:
                rec.update({k: dict(v) if isinstance(v, Mapping) else v
                            for k, v in stored.items()})
            records[team.name] = rec
        st = TeamState.from_dict(rec["state"])
        pending: dict[str, Any] = rec["pending"]
        queue: dict[str, Any] = rec.setdefault("queue", {})
        op = cmd.get("op")
        if op == "alert":
            alert = dict(cmd["alert"])
            aid = alert["alert_id"]
            if aid in pending or aid in queue:
                continue  # a replayed request: already assigned
            sla = routing.sla_seconds(alert["kind"])
            at = int(alert["triggered_ms"])
            # The SLA runs from when the rep could first see the alert: a replayed or late
            # trigger (event time long past) must not escalate the moment it is routed.
            due_from = max(at, int(cmd.get("routed_ms") or at))
            prior_id = alert.get("updates")
            prior = pending.pop(prior_id, None) if prior_id else None
            if prior_id:
                queue.pop(prior_id, None)
            supersedes = [prior_id, *(prior or {}).get("supersedes", [])] if prior_id else []
            owner = prior["owner"] if prior else alert.get("current_owner")
            if prior_id and owner in {r.id for r in team.reps} and \
                    not (prior or {}).get("waiting"):
                # The stricter alert for a lead a rep already has: an update of the first
                # one, to the same owner, due at the tighter of the two SLAs.
                due = sla_due(team, due_from, sla * 1000) if sla else None
                if prior is not None and due is not None:
                    due = min(due, int(prior["due_ms"]))
                body = _body(team, alert, owner, f"update of alert {prior_id}: same owner, "
                             "the tighter SLA", (), frozenset(), sla, due)
                out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))
                if due is not None:
                    pending[aid] = {"due_ms": due, "alert": alert, "owner": owner,
                                    "excluded": (prior or {}).get("excluded", []),
                                    "supersedes": supersedes}
                continue
            opens = closed_until(team, due_from)
            if opens is not None:
                # Nobody at work: wait unowned in the team queue; the timer assigns it (and
                # starts its SLA) at the opening, so it never escalates to nobody.
                pending[aid] = {
                    "due_ms": opens, "alert": alert, "owner": None, "excluded": [],
                    "waiting": True, "reason": f"team closed until {iso_offset(opens)}",
                    "since": iso_offset(due_from), "supersedes": supersedes}
                continue
            st, body = _place(team, st, alert, sla, due_from, frozenset())
            out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))
            if body["owner"] is None:
                _queue(rec, body, due_from, _unowned_why(body))
            if sla:
                pending[aid] = {
                    "due_ms": sla_due(team, due_from, sla * 1000), "alert": alert,
                    "owner": body["owner"], "excluded": [], "supersedes": supersedes}
        elif op == "ack":
            lead, aid, at = cmd["lead_id"], cmd.get("alert_id"), int(cmd["at_ms"])
            for key in [k for k, p in pending.items() if _acks(k, p, lead, aid)]:
                p = pending.pop(key)
                seconds = max(0.0, (at - int(p["alert"]["triggered_ms"])) / 1000)
                out.speed_to_lead.append((team.name, p["alert"]["kind"], seconds))
            for key in [k for k, q in queue.items() if _acks(k, q, lead, aid)]:
                del queue[key]
        elif op == "tick":
            now = int(cmd["now_ms"])
            for key in [k for k, p in pending.items() if p["due_ms"] <= now]:
                p = pending[key]
                alert = p["alert"]
                sla = routing.sla_seconds(alert["kind"]) or 0
                opens = closed_until(team, now)
                if opens is not None:  # lapsed at closing time: act when the team opens
                    pending[key] = {**p, "due_ms": opens}
                    continue
                keep = {"supersedes": p.get("supersedes", [])}
                if p.get("waiting"):
                    st, body = _place(team, st, alert, sla, now, frozenset())
                    out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))
                    if body["owner"] is None:
                        _queue(rec, body, now, _unowned_why(body))
                    if sla:
                        pending[key] = {"due_ms": sla_due(team, now, sla * 1000),
                                        "alert": alert, "owner": body["owner"], "excluded": [],
                                        **keep}
                    else:
                        del pending[key]
                    continue
                excluded = frozenset([*p["excluded"], *([p["owner"]] if p["owner"] else [])])
                st, body = _place(team, st, alert, sla, now, excluded)
                body["reassigned"] = True
                reason = f"not acknowledged within {sla}s"
                if body["owner"] is None:
                    # Every rep had it (or none is available): escalate once, unowned, and
                    # stop the timer; repeating it every SLA period would only be noise.
                    # It stays in the team queue until someone acknowledges it.
                    reason += f"; no rep of team {team.name} left to reassign to"
                    body["sla_seconds"] = None
                    body["due_at"] = None
                    del pending[key]
                    _queue(rec, body, now, reason)
                else:
                    queue.pop(key, None)
                    pending[key] = {"due_ms": sla_due(team, now, sla * 1000), "alert": alert,
                                    "owner": body["owner"], "excluded": sorted(excluded),
                                    **keep}
                out.breaches.append((team.name, alert["kind"]))
                out.emitted.append(Emitted("escalations", team.name, alert["lead_id"], {
                    "alert_id": key, "lead_id": alert["lead_id"], "team": team.name,
                    "kind": alert["kind"], "from_owner": p["owner"], "to_owner": body["owner"],
                    "sla_seconds": sla, "triggered_at": iso_offset(int(alert["triggered_ms"])),
                    "breached_at": iso_offset(now), "reason": reason,
                    "rules_version": alert.get("rules_version"),
                }))
                out.emitted.append(Emitted("team", team.name, alert["lead_id"], body))
        rec["state"] = st.to_dict()
    out.writes = records
    out.emitted += _ownership([e for e in out.emitted if e.role == "team"])
    return out


def team_queue(team: str, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A team's open work, as the queue view shows it: alerts waiting for the team to open,
    alerts no rep could take (and why), and owned alerts with their SLA due time."""
    record = record or {}
    waiting, owned = [], []
    for aid, p in (record.get("pending") or {}).items():
        a = p["alert"]
        item = {"alert_id": aid, "lead_id": a["lead_id"], "kind": a["kind"],
                "due_at": iso_offset(int(p["due_ms"]))}
        if p.get("waiting"):
            waiting.append({**item, "since": p.get("since"), "reason": p.get("reason")})
        elif p.get("owner"):
            owned.append({**item, "owner": p["owner"]})
    unowned = list((record.get("queue") or {}).values())
    return {"team": team, "waiting": waiting, "unowned": unowned, "owned": owned,
            "unowned_dropped": int(record.get("queue_dropped", 0))}


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


def overdue(record: Mapping[str, Any], now_ms: int) -> bool:
    """Whether a team record has an alert whose SLA has lapsed (the timer's test)."""
    return any(p["due_ms"] <= now_ms for p in record.get("pending", {}).values())


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
    commands: Sequence[tuple[str, Mapping[str, Any]]],
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
    tick = dumps({"op": "tick", "now_ms": now_ms})
    return tuple(Send(dest.assign, team, tick, None) for team, record in records
                 if record is not None and overdue(record, now_ms))
