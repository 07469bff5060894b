"""The console in tests: a backend held in memory for the page tests (no worker, no Kafka),
and a real `leadflow console` process for the browser tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.console.funnel import Funnel, funnel
from pipeline.console.sources import (
    AckSent,
    AlreadyAcknowledged,
    EscalationSeen,
    ScoreChangeSeen,
    SearchResult,
    StageMove,
    TeamQueue,
    UnknownAlert,
)
from pipeline.devkafka.ports import free_port
from pipeline.errors import WorkerUnreachable
from tests.support.workers import REPO, Isolated, WorkerProcess


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
    changes: dict[str, list[ScoreChangeSeen]] = field(default_factory=dict)
    escalated: list[EscalationSeen] = field(default_factory=list)
    sent: dict[str, AckSent] = field(default_factory=dict)
    down: bool = False
    unanswered: list[str] = field(default_factory=list)

    def _up(self) -> None:
        if self.down:
            raise WorkerUnreachable("no worker answered at http://127.0.0.1:1 (refused)")

    async def lead(self, lead_id: str) -> Mapping[str, Any] | None:
        self._up()
        return self.leads.get(lead_id)

    async def score_history(self, lead_id: str) -> list[ScoreChangeSeen]:
        self._up()
        return self.changes.get(lead_id, [])

    async def search(self, q: str) -> SearchResult:
        self._up()
        return SearchResult(tuple({"lead_id": k, "stage": d["stage"], "score": d["scores"]["total"],
                 "email": d.get("email"), "company": d["traits"].get("company")}
                for k, d in self.leads.items() if q in k.casefold()), tuple(self.unanswered))

    async def queue(self, team: str) -> TeamQueue | None:
        self._up()
        return self.queues.get(team)

    async def funnel(self, teams: Sequence[str]) -> Funnel:
        self._up()
        return funnel(self.metrics_texts, teams)

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


class ConsoleProcess:
    """A real `leadflow console` process with an isolated test's settings."""

    def __init__(self, iso: Isolated, worker: WorkerProcess, log: Path, *,
                 token: str | None = None) -> None:
        self.port = free_port()
        self.log_path = log
        self.env = {**os.environ, **iso.env, "LEADFLOW_CONSOLE_PORT": str(self.port),
                    "LEADFLOW_CONSOLE_WORKERS": orjson.dumps([worker.url("")]).decode()}
        if token is not None:
            self.env["LEADFLOW_CONSOLE_TOKEN"] = token
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self, timeout: float = 60.0) -> None:
        import aiohttp

        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "console"], env=self.env, cwd=REPO,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"console exited {self.proc.returncode}:\n{self.tail()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url("/healthz")) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
        raise AssertionError(f"console not up after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
