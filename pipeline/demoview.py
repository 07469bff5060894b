"""The demo's live view: a summary that updates in place, the notable events below it.

Pure bookkeeping over what the demo reads (output messages, the worker's readiness and its
events counter); `pipeline/demo.py` feeds it and draws it. On a terminal the summary is
redrawn in place; piped (a log, a test) the same summary is printed as a line now and then
and every notable event as its own line.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

#: Notable events kept under the summary.
RECENT = 12
#: Routing topics that are not a team's alert queue.
NOT_TEAMS = ("nurture", "recycle", "review", "escalations")


@dataclass
class WorkerStatus:
    """What the worker's /readyz and /metrics said last."""

    reachable: bool = False
    ready: bool = False
    assigned_partitions: int = 0
    recovering: bool = False
    events_scored: float = 0.0


@dataclass
class LiveSummary:
    """Counts over the outputs seen since the demo started, and the worker's rate."""

    stage_changes: str
    deadletter: str
    routing_prefix: str
    leads_by_stage: Counter[str] = field(default_factory=Counter)
    alerts_by_team: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)  # nurture, recycle, review, ...
    unowned: int = 0
    dead_letters: int = 0
    refused: int = 0
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    worker: WorkerStatus = field(default_factory=WorkerStatus)
    events_per_s: float = 0.0
    _last_scored: tuple[float, float] | None = None  # (monotonic s, events scored)

    def feed(self, topic: str, data: Mapping[str, Any]) -> str | None:
        """Count one output message; its line (rich markup) when it is notable."""
        if topic == self.stage_changes:
            return self._stage(data)
        if topic == self.deadletter:
            self.dead_letters += 1
            return self._keep(f"[red]dead letter[/] from {_v(data, 'source_topic')}: "
                              f"{_v(data, 'reason')}")
        if topic.startswith(self.routing_prefix):
            name = topic[len(self.routing_prefix):]
            if name in NOT_TEAMS:
                self.routed[name] += 1
                if name != "escalations":
                    return None
                return self._keep(f"[blue]escalation[/] {_v(data, 'lead_id')}")
            self.alerts_by_team[name] += 1
            owner = data.get("owner")
            if owner is None:
                self.unowned += 1
            reasons = ", ".join(escape(str(r.get("rule"))) for r in
                                (data.get("top_reasons") or [])[:3] if isinstance(r, Mapping))
            who = escape(str(owner)) if owner is not None else "[yellow]unowned[/]"
            return self._keep(f"[magenta]alert[/]  {escape(name)}: {_v(data, 'lead_id')} "
                              f"{_v(data, 'kind')} {_score(data)} owner={who} ({reasons})")
        return None

    def _stage(self, data: Mapping[str, Any]) -> str | None:
        src, dst = data.get("from_stage"), data.get("to_stage")
        lead, moved = _v(data, "lead_id"), f"{_v(data, 'from_stage')} → "
        if data.get("status", "applied") == "refused":
            self.refused += 1
            return self._keep(f"[yellow]refused[/] {lead}: {moved}{_v(data, 'to_stage')} "
                              f"({_v(data, 'reason')})")
        if isinstance(src, str) and self.leads_by_stage[src] > 0:
            self.leads_by_stage[src] -= 1
        if isinstance(dst, str):
            self.leads_by_stage[dst] += 1
        cause = data.get("cause") or {}
        why = cause.get("rule") or cause.get("event_name") if isinstance(cause, Mapping) else ""
        return self._keep(f"[cyan]stage[/]  {lead}: {moved}[bold]{_v(data, 'to_stage')}[/] "
                          f"{_score(data)} (cause: {escape(str(why))})")

    def _keep(self, line: str) -> str:
        self.recent.append(line)
        return line

    def observe(self, status: WorkerStatus, now_s: float) -> None:
        """The worker's latest status; the event rate from its counter's last two readings."""
        self.worker = status
        if not status.reachable:
            return
        if self._last_scored is not None:
            t0, n0 = self._last_scored
            if now_s > t0 and status.events_scored >= n0:
                self.events_per_s = (status.events_scored - n0) / (now_s - t0)
        self._last_scored = (now_s, status.events_scored)

    def state_line(self) -> str:
        """What the worker is doing, in words."""
        w = self.worker
        if not w.reachable:
            return "worker starting…"
        if w.recovering:
            return "worker restoring its tables from the changelogs…"
        if not w.ready:
            return ("worker joined; waiting for Kafka to assign its partitions (fresh topics "
                    "take a few seconds to elect leaders)…")
        return f"worker ready on {w.assigned_partitions} partitions"

    def line(self) -> str:
        """The summary on one line (for output that is not a terminal)."""
        stages = ", ".join(f"{s} {n}" for s, n in self.leads_by_stage.most_common() if n)
        teams = ", ".join(f"{t} {n}" for t, n in sorted(self.alerts_by_team.items()))
        return (f"summary: {self.state_line()}; {self.events_per_s:,.0f} events/s scored "
                f"({self.worker.events_scored:,.0f} in all); leads by stage: {stages or '-'}; "
                f"alerts by team: {teams or '-'}; unowned {self.unowned}; "
                f"dead letters {self.dead_letters}")

    def render(self) -> Group:
        """The summary as tables, the recent notable events below it."""
        head = Text.from_markup(
            f"[bold]{self.state_line()}[/]   {self.events_per_s:,.0f} events/s scored, "
            f"{self.worker.events_scored:,.0f} in all")
        stages = Table(title="leads by stage", title_justify="left")
        stages.add_column("stage")
        stages.add_column("leads", justify="right")
        for stage, n in self.leads_by_stage.most_common():
            if n:
                stages.add_row(stage, f"{n:,}")
        alerts = Table(title="alerts", title_justify="left")
        alerts.add_column("team")
        alerts.add_column("alerts", justify="right")
        for team, n in sorted(self.alerts_by_team.items()):
            alerts.add_row(team, f"{n:,}")
        alerts.add_row("[yellow]unowned[/]", f"{self.unowned:,}")
        for name in NOT_TEAMS:
            if self.routed[name]:
                alerts.add_row(name, f"{self.routed[name]:,}")
        alerts.add_row("[red]dead letters[/]", f"{self.dead_letters:,}")
        grid = Table.grid(padding=(0, 4))
        grid.add_row(stages, alerts)
        recent = [Text.from_markup(line) for line in self.recent]
        return Group(head, grid, Text("recent:", style="dim"), *recent)


def _v(data: Mapping[str, Any], key: str) -> str:
    # Message values are data, never markup: a "[" in a lead id must print as itself.
    return escape(str(data.get(key, "?")))


def _score(data: Mapping[str, Any]) -> str:
    total = (data.get("scores") or {}).get("total")
    return f"score {total:g}" if isinstance(total, int | float) else ""
