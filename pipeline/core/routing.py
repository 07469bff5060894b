"""Routing, pure: which team a hot lead goes to, which rep owns it, and when its SLA ends.

Teams match on territory (country/region) and segment (company size); the first team that
matches wins, and a catch-all team takes the rest. Inside a team, owners are chosen by
smooth weighted round robin over the reps' capacities (deterministic: the same sequence of
alerts gives the same owners after a replay), skipping unavailable reps and reps at their
daily cap; a lead from an account (e-mail domain) that already has an owner in the team
goes to that owner. Every decision carries its reason for the alert's audit trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.calendar import Away, WeeklyHours, check_zone, unavailable
from pipeline.core.durations import Duration

DAY_MS = 86_400_000


class Rep(BaseModel):
    """An account executive in a team."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    capacity: int = Field(default=1, ge=1, description="Weight in the round robin.")
    daily_cap: int | None = Field(default=None, ge=1, description="Most new leads per day.")
    available: bool = True
    timezone: str | None = Field(default=None, description="IANA zone; else the team's.")
    hours: WeeklyHours | None = Field(default=None, description="Else the team's; none: always.")
    away: tuple[Away, ...] = Field(default=(), description="Out-of-office date ranges.")

    _zone = field_validator("timezone")(check_zone)


class TeamMatch(BaseModel):
    """Conditions a lead must meet for a team; all given ones must hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    countries: frozenset[str] | None = None
    min_employees: int | None = Field(default=None, ge=0)
    max_employees: int | None = Field(default=None, ge=0)

    @field_validator("countries", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        if isinstance(v, list | tuple | set | frozenset):
            return frozenset(str(c).upper() for c in v)
        return v


class Team(BaseModel):
    """A sales team with its routing topic `routing.<name>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    match: TeamMatch | None = Field(default=None, description="None: the catch-all team.")
    reps: tuple[Rep, ...] = ()
    timezone: str | None = Field(default=None, description="Reps' default IANA zone (UTC).")
    hours: WeeklyHours | None = Field(default=None, description="Reps' default hours.")
    # Business hours by default: an SLA that runs through the night and the weekend only
    # produces escalations nobody can act on. Without `hours` it is the same as wall_clock.
    sla_clock: Literal["business_hours", "wall_clock"] = "business_hours"

    _zone = field_validator("timezone")(check_zone)


class RoutingRules(BaseModel):
    """The `routing:` section of the rules file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teams: tuple[Team, ...] = Field(min_length=1)
    sla: dict[str, Duration] = Field(
        default_factory=lambda: {"instant": 300_000, "hot_score": 3_600_000, "pql": 3_600_000},
        description="SLA per alert kind (instant, hot_score, pql), e.g. 5m; in ms once parsed.",
    )

    def sla_seconds(self, kind: str) -> int | None:
        """The SLA of an alert kind in whole seconds, None when the kind has none."""
        ms = self.sla.get(kind)
        return None if ms is None else max(1, ms // 1000)

    @model_validator(mode="after")
    def _one_catch_all(self) -> RoutingRules:
        names = [t.name for t in self.teams]
        if len(set(names)) != len(names):
            raise ValueError(f"team names must be unique, got {names}")
        catch_all = [t.name for t in self.teams if t.match is None]
        if len(catch_all) != 1:
            raise ValueError(f"exactly one catch-all team (no 'match') is needed, got {catch_all}")
        if self.teams[-1].match is not None:
            raise ValueError("the catch-all team must come last: teams are tried in order")
        return self


def email_domain(traits: Mapping[str, Any], free_mail: frozenset[str]) -> str | None:
    """The lead's company domain from its e-mail, None for free-mail addresses (the rules
    file's `free_email_domains`, the same list fit rules read)."""
    email = traits.get("email")
    if not isinstance(email, str) or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].strip().lower()
    return None if domain in free_mail else domain


def _employees(traits: Mapping[str, Any]) -> int | None:
    for v in (traits.get("employees"), (traits.get("company") or {}).get("employee_count")
              if isinstance(traits.get("company"), Mapping) else None):
        if isinstance(v, int | float) and not isinstance(v, bool):
            return int(v)
    return None


def choose_team(rules: RoutingRules, traits: Mapping[str, Any]) -> tuple[Team, str]:
    """The first team whose match holds, with the reason."""
    address = traits.get("address")
    spec_country = address.get("country") if isinstance(address, Mapping) else None
    country = str(spec_country or traits.get("country") or "").upper()
    size = _employees(traits)
    for team in rules.teams:
        m = team.match
        if m is None:
            return team, "catch-all team"
        if m.countries is not None and country not in m.countries:
            continue
        if m.min_employees is not None and (size is None or size < m.min_employees):
            continue
        if m.max_employees is not None and (size is None or size > m.max_employees):
            continue
        parts = []
        if m.countries is not None:
            parts.append(f"country {country}")
        if m.min_employees is not None or m.max_employees is not None:
            parts.append(f"{size} employees")
        return team, "territory/segment match: " + ", ".join(parts)
    raise AssertionError("unreachable: validation guarantees a catch-all team")


@dataclass(frozen=True, slots=True)
class TeamState:
    """Assignment state of one team: round-robin weights, today's counts, account owners."""

    current: Mapping[str, int] = field(default_factory=dict)
    day: int = -1
    today: Mapping[str, int] = field(default_factory=dict)
    accounts: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the table."""
        return {"current": dict(self.current), "day": self.day, "today": dict(self.today),
                "accounts": dict(self.accounts)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TeamState:
        """Inverse of to_dict."""
        return cls(current=dict(d.get("current", {})), day=int(d.get("day", -1)),
                   today=dict(d.get("today", {})), accounts=dict(d.get("accounts", {})))


@dataclass(frozen=True, slots=True)
class Assignment:
    """Who owns the lead and why."""

    owner: str | None
    reason: str
    skipped: tuple[str, ...] = ()


def assign(
    team: Team, state: TeamState | None, *, domain: str | None, at_ms: int,
    exclude: frozenset[str] = frozenset(),
) -> tuple[TeamState, Assignment]:
    """Pick an owner in `team` for a lead from `domain` at event time `at_ms`.

    `exclude` names reps that may not take it (the rep whose SLA just lapsed).
    """
    st = state or TeamState()
    day = at_ms // DAY_MS
    today = dict(st.today) if st.day == day else {}
    by_id = {r.id: r for r in team.reps}
    skipped: list[str] = []

    def eligible(rep: Rep) -> str | None:
        if rep.id in exclude:
            return "excluded after SLA breach"
        if not rep.available:
            return "unavailable"
        off = unavailable(team, rep, at_ms)
        if off is not None:
            return off
        if rep.daily_cap is not None and today.get(rep.id, 0) >= rep.daily_cap:
            return f"daily cap {rep.daily_cap} reached"
        return None

    if domain and domain in st.accounts and st.accounts[domain] in by_id:
        owner = st.accounts[domain]
        why_not = eligible(by_id[owner])
        if why_not is None:
            today[owner] = today.get(owner, 0) + 1
            new = replace(st, day=day, today=today)
            return new, Assignment(owner, f"account owner of {domain}")
        skipped.append(f"{owner}: account owner but {why_not}")

    candidates = []
    for rep in team.reps:
        why_not = eligible(rep)
        if why_not is None:
            candidates.append(rep)
        else:
            skipped.append(f"{rep.id}: {why_not}")
    if not candidates:
        return replace(st, day=day, today=today), Assignment(
            None, "no rep available: left for the team queue", tuple(skipped))
    # Smooth weighted round robin (as in nginx): deterministic and evenly interleaved.
    current = {r.id: st.current.get(r.id, 0) + r.capacity for r in candidates}
    total = sum(r.capacity for r in candidates)
    owner = max(candidates, key=lambda r: (current[r.id], -team.reps.index(r))).id
    current[owner] -= total
    merged = {**st.current, **current}
    today[owner] = today.get(owner, 0) + 1
    accounts = dict(st.accounts)
    if domain and domain not in accounts:
        accounts[domain] = owner
    new = TeamState(current=merged, day=day, today=today, accounts=accounts)
    return new, Assignment(owner, "weighted round robin by capacity", tuple(skipped))


# Without a routing section every hot lead goes to one catch-all team with no named reps.
DEFAULT_ROUTING = RoutingRules(teams=(Team(name="sales"),))
