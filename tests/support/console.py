"""A console backend held in memory, for the console's page tests (no worker, no Kafka)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.console.sources import (
    AckSent,
    AlreadyAcknowledged,
    EscalationSeen,
    StageMove,
    TeamQueue,
    UnknownAlert,
)
from pipeline.errors import WorkerUnreachable


@dataclass
class MemoryBackend:
    """Leads, queues and metrics given by the test; acknowledgements recorded.

    `routed` holds alert ids a team's routing topic has (open or not); an ack of an id in
    none of them is unknown, of one not open in the queue already acknowledged.
    """

    leads: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    queues: dict[str, TeamQueue] = field(default_factory=dict)
    routed: set[str] = field(default_factory=set)
    metrics_texts: list[str] = field(default_factory=list)
    moves: dict[str, list[StageMove]] = field(default_factory=dict)
    escalated: list[EscalationSeen] = field(default_factory=list)
    sent: dict[str, AckSent] = field(default_factory=dict)
    down: bool = False

    def _up(self) -> None:
        if self.down:
            raise WorkerUnreachable("no worker answered at http://127.0.0.1:1 (refused)")

    async def lead(self, lead_id: str) -> Mapping[str, Any] | None:
        self._up()
        return self.leads.get(lead_id)

    async def search(self, q: str) -> list[Mapping[str, Any]]:
        self._up()
        return [{"lead_id": k, "stage": d["stage"], "score": d["scores"]["total"],
                 "email": d.get("email"), "company": d["traits"].get("company")}
                for k, d in self.leads.items() if q in k.casefold()]

    async def queue(self, team: str) -> TeamQueue | None:
        self._up()
        return self.queues.get(team)

    async def metrics(self) -> list[str]:
        self._up()
        return self.metrics_texts

    def history(self, lead_id: str) -> list[StageMove]:
        return self.moves.get(lead_id, [])

    def escalations(self, team: str | None = None) -> list[EscalationSeen]:
        return [e for e in self.escalated if team is None or e.team == team]

    def acked(self, alert_id: str) -> AckSent | None:
        return self.sent.get(alert_id)

    async def acknowledge(self, team: str, alert_id: str) -> AckSent:
        if alert_id in self.sent:
            raise AlreadyAcknowledged(f"alert {alert_id} was already acknowledged")
        q = self.queues.get(team)
        item = q.find(alert_id) if q else None
        if item is None:
            if alert_id in self.routed:
                raise AlreadyAcknowledged(f"alert {alert_id} is not open in team {team}'s queue")
            raise UnknownAlert(f"no alert {alert_id} in team {team}'s queue")
        self.sent[alert_id] = AckSent(alert_id, item.lead_id, 0, len(self.sent), 0)
        return self.sent[alert_id]
