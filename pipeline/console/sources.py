"""Where the console's pages come from: the workers' web API (lead documents, search,
team queues, /metrics), Kafka (stage history and escalations, read as they come; the
acknowledgement, produced as `leadflow alerts ack` produces it).

`Backend` is what the pages need; `LiveBackend` is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import orjson
from pydantic import SecretStr

from pipeline.alerts import topic_partitions
from pipeline.alerts.ack import AlertNotFound, ack_event, find_alert, send_ack
from pipeline.console.funnel import (
    RATIOS,
    TEAM_SERIES,
    Funnel,
    Vector,
    funnel,
    funnel_from_prometheus,
)
from pipeline.errors import InvalidQuery, LeadflowError, WorkerUnreachable
from pipeline.kafka.security import KafkaSecurity, start_client
from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: Stage moves kept per lead, and leads kept, for the lead page's history.
HISTORY_PER_LEAD = 20
HISTORY_LEADS = 100_000
#: Escalations kept (newest) for the team pages.
ESCALATIONS_KEPT = 500


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One open alert of a team queue. `section`: waiting, unowned or owned."""

    section: str
    alert_id: str
    lead_id: str
    kind: str
    due_ms: int | None
    owner: str | None
    since: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class TeamQueue:
    """A team's open alerts as the worker's `/teams/{team}/queue` lists them."""

    team: str
    items: tuple[QueueItem, ...]
    unowned_dropped: int
    as_of_ms: int | None = None  # the worker's clock when it answered

    def find(self, alert_id: str) -> QueueItem | None:
        return next((i for i in self.items if i.alert_id == alert_id), None)

    def section(self, name: str) -> list[QueueItem]:
        return [i for i in self.items if i.section == name]


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def parse_queue(doc: Mapping[str, Any]) -> TeamQueue:
    """The worker's queue document as records."""
    items = []
    for section in ("waiting", "unowned", "owned"):
        for a in doc.get(section) or []:
            items.append(QueueItem(section, str(a["alert_id"]), str(a["lead_id"]),
                                   str(a.get("kind") or ""), _ms(a.get("due_at")),
                                   a.get("owner"), a.get("since"), a.get("reason")))
    return TeamQueue(str(doc["team"]), tuple(items), int(doc.get("unowned_dropped") or 0),
                     _ms(doc.get("as_of")))


@dataclass(frozen=True, slots=True)
class StageMove:
    """One applied or refused stage change of a lead."""

    at_ms: int
    from_stage: str
    to_stage: str
    status: str
    reason: str | None
    rule: str | None
    event_name: str | None


@dataclass(frozen=True, slots=True)
class EscalationSeen:
    """An alert that breached its SLA, as read from the escalations topic."""

    alert_id: str
    lead_id: str
    team: str
    from_owner: str | None
    to_owner: str | None
    breached_at: str
    reason: str


@dataclass(frozen=True, slots=True)
class AckSent:
    """An acknowledgement the console produced: where it went."""

    alert_id: str
    lead_id: str
    partition: int
    offset: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Leads a search found (best score first) and the workers that did not answer, whose
    partitions' leads may be missing from it."""

    matches: tuple[Mapping[str, Any], ...]
    unanswered: tuple[str, ...] = ()


class AckRefused(LeadflowError):
    """Base of the acknowledgements the console refuses; `status` is the HTTP answer."""

    status = 409


class UnknownAlert(AckRefused):
    """The alert id is open in no queue and on none of the team's routing topics."""

    status = 404


class AlreadyAcknowledged(AckRefused):
    """The alert is not open any more (acknowledged, here or elsewhere)."""

    status = 409


@dataclass(frozen=True, slots=True)
class ScoreChangeSeen:
    """One of a lead's recent score changes, as the worker's `/leads/{id}/history` gives it."""

    at_ms: int
    kind: str
    rule: str
    group: str
    delta: float
    total: float


class Backend(Protocol):
    """What the console's pages read and do."""

    async def lead(self, lead_id: str) -> Mapping[str, Any] | None: ...
    async def score_history(self, lead_id: str) -> list[ScoreChangeSeen]: ...
    async def search(self, q: str) -> SearchResult: ...
    async def queue(self, team: str) -> TeamQueue | None: ...
    async def funnel(self, teams: Sequence[str]) -> Funnel: ...
    def history(self, lead_id: str) -> list[StageMove]: ...
    def escalations(self, team: str | None = None) -> list[EscalationSeen]: ...
    def acked(self, alert_id: str) -> AckSent | None: ...
    async def acknowledge(self, team: str, alert_id: str) -> AckSent: ...


class Feed:
    """Stage changes per lead and the latest escalations, kept in memory (bounded)."""

    def __init__(self) -> None:
        self._history: OrderedDict[str, deque[StageMove]] = OrderedDict()
        self._escalations: deque[EscalationSeen] = deque(maxlen=ESCALATIONS_KEPT)

    def add_stage_change(self, raw: bytes | None) -> None:
        doc = _json(raw)
        if doc is None or not isinstance(doc.get("lead_id"), str):
            return  # not a stage change: nothing to show (the worker wrote it; not ours)
        cause = doc.get("cause") or {}
        move = StageMove(int(doc.get("at_ms") or 0), str(doc.get("from_stage")),
                         str(doc.get("to_stage")), str(doc.get("status")), doc.get("reason"),
                         cause.get("rule"), cause.get("event_name"))
        lead = doc["lead_id"]
        moves = self._history.pop(lead, None) or deque(maxlen=HISTORY_PER_LEAD)
        moves.append(move)
        self._history[lead] = moves  # most recently changed last: the first to go is the oldest
        while len(self._history) > HISTORY_LEADS:
            self._history.popitem(last=False)

    def add_escalation(self, raw: bytes | None) -> None:
        doc = _json(raw)
        if doc is None or not isinstance(doc.get("alert_id"), str):
            return
        self._escalations.append(EscalationSeen(
            doc["alert_id"], str(doc.get("lead_id")), str(doc.get("team")),
            doc.get("from_owner"), doc.get("to_owner"), str(doc.get("breached_at")),
            str(doc.get("reason"))))

    def history(self, lead_id: str) -> list[StageMove]:
        return sorted(self._history.get(lead_id, ()), key=lambda m: m.at_ms)

    def escalations(self, team: str | None = None) -> list[EscalationSeen]:
        return [e for e in reversed(self._escalations) if team is None or e.team == team]


def _json(raw: bytes | None) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


class WorkerClient:
    """The workers' web API: any worker routes a lead or team to its owner; search and
    /metrics are asked of every worker (each answers for its own partitions)."""

    def __init__(self, urls: Sequence[str], token: SecretStr | None,
                 timeout_s: float = 10.0) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self._headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, base: str, path: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = base + path
        try:
            async with self._session.get(url, headers=self._headers) as r:
                body = await r.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WorkerUnreachable(f"no worker answered at {base} ({exc or type(exc).__name__})"
                                    "; start one with `leadflow worker` or set "
                                    "LEADFLOW_CONSOLE_WORKERS") from None
        if r.status == 401:
            raise WorkerUnreachable(f"the worker at {base} refused the console's token: set "
                                    "LEADFLOW_API_TOKEN to the workers' token")
        return r.status, body

    async def _first(self, path: str) -> tuple[int, bytes]:
        last: WorkerUnreachable | None = None
        for base in self.urls:
            try:
                return await self._get(base, path)
            except WorkerUnreachable as exc:
                last = exc
        assert last is not None
        raise last

    async def lead(self, lead_id: str) -> Mapping[str, Any] | None:
        status, body = await self._first(f"/leads/{urllib.parse.quote(lead_id, safe='')}")
        if status == 404:
            return None
        return self._ok(status, body)

    async def score_history(self, lead_id: str) -> list[ScoreChangeSeen]:
        """The lead's recent score changes, newest first (none for an unknown lead)."""
        status, body = await self._first(
            f"/leads/{urllib.parse.quote(lead_id, safe='')}/history")
        if status == 404:
            return []
        return [ScoreChangeSeen(int(c["at_ms"]), str(c["kind"]), str(c["rule"]),
                                str(c["group"]), float(c["delta"]),
                                float(c["scores"]["total"]))
                for c in self._ok(status, body)["changes"]]

    async def queue(self, team: str) -> TeamQueue | None:
        status, body = await self._first(f"/teams/{urllib.parse.quote(team, safe='')}/queue")
        if status == 404:
            return None
        return parse_queue(self._ok(status, body))

    async def search(self, q: str) -> SearchResult:
        """Every worker's matches; one that does not answer is named, not fatal (unless none
        answers): each worker holds only its own partitions' leads."""
        path = "/search?" + urllib.parse.urlencode({"q": q})
        got = await asyncio.gather(*(self._get(b, path) for b in self.urls),
                                   return_exceptions=True)
        failed = [(u, a) for u, a in zip(self.urls, got, strict=True)
                  if isinstance(a, BaseException)]
        for _, a in failed:
            if not isinstance(a, WorkerUnreachable):
                raise a
        if len(failed) == len(self.urls):
            raise failed[0][1]
        out: dict[str, Mapping[str, Any]] = {}
        for answer in got:
            if isinstance(answer, BaseException):
                continue
            status, body = answer
            if status == 400:
                raise InvalidQuery(str(orjson.loads(body).get("error", "malformed search")))
            for m in self._ok(status, body)["matches"]:
                out.setdefault(m["lead_id"], m)  # each lead is active on one worker only
        best = sorted(out.values(), key=lambda m: (-float(m["score"]), m["lead_id"]))
        return SearchResult(tuple(best), tuple(u for u, _ in failed))

    async def metrics(self) -> list[str]:
        answers = await asyncio.gather(*(self._get(b, "/metrics") for b in self.urls))
        return [body.decode() for _, body in answers]

    @staticmethod
    def _ok(status: int, body: bytes) -> dict[str, Any]:
        if status != 200:
            detail = body[:200].decode(errors="replace")
            raise WorkerUnreachable(f"the worker answered {status}: {detail}")
        doc: dict[str, Any] = orjson.loads(body)
        return doc


class PrometheusUnreachable(LeadflowError):
    """The configured Prometheus did not answer a query (or answered with an error)."""


class PrometheusClient:
    """Instant queries of the recorded funnel series on a Prometheus server."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def query(self, session: aiohttp.ClientSession, promql: str) -> Vector:
        try:
            async with session.get(f"{self.url}/api/v1/query", params={"query": promql}) as r:
                body = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise PrometheusUnreachable(
                f"Prometheus at {self.url} did not answer ({exc or type(exc).__name__}): "
                "check LEADFLOW_CONSOLE_PROMETHEUS_URL") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusUnreachable(f"Prometheus at {self.url} refused {promql}: {error}")
        return [(dict(s.get("metric") or {}), float(s["value"][1]))
                for s in body["data"]["result"]]

    async def funnel(self, teams: Sequence[str]) -> Funnel:
        series = [s for _, _, s in RATIOS] + list(TEAM_SERIES.values())
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            answers = await asyncio.gather(*(self.query(session, s) for s in series))
        return funnel_from_prometheus(dict(zip(series, answers, strict=True)), teams,
                                      window="their windows (a day; SLA breaches an hour)")


class LiveBackend:
    """The workers over HTTP, Kafka for the feed and the acknowledgements."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        urls = settings.console_workers or [f"http://127.0.0.1:{settings.web_port}"]
        self.settings = settings
        self.bootstrap = bootstrap
        self.security = KafkaSecurity.from_settings(settings)
        self.workers = WorkerClient(urls, settings.api_token)
        self.prometheus = (PrometheusClient(settings.console_prometheus_url)
                           if settings.console_prometheus_url else None)
        self.feed = Feed()
        self._acks: dict[str, AckSent] = {}
        self._task: asyncio.Task[None] | None = None
        #: set once the feed has read every record that existed when it started
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.workers.close()

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer

        t = self.settings.topics
        # From the cluster's metadata: a consumer without a subscription knows no partitions.
        tps, missing = await topic_partitions(self.bootstrap, [t.stage_changes, t.escalations],
                                              security=self.security)
        if missing:
            log.warning("topics %s do not exist (yet): `leadflow topics create` makes them; "
                        "stage history and escalations stay empty until a restart",
                        ", ".join(missing))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
            **self.security.client_kwargs())
        await start_client(consumer, self.bootstrap, self.security)
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    add = (self.feed.add_stage_change if tp.topic == t.stage_changes
                           else self.feed.add_escalation)
                    for r in records:
                        add(r.value)
                if not self.caught_up.is_set():
                    behind = [tp for tp, end in ends.items()
                              if await consumer.position(tp) < end]
                    if not behind:
                        self.caught_up.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the console's feed of stage changes and escalations stopped")
        finally:
            await consumer.stop()

    async def lead(self, lead_id: str) -> Mapping[str, Any] | None:
        return await self.workers.lead(lead_id)

    async def score_history(self, lead_id: str) -> list[ScoreChangeSeen]:
        # from the worker, not a topic: it keeps them bounded with the lead, while
        # leads.score-changes has a message per rule hit, too many to hold here per lead
        return await self.workers.score_history(lead_id)

    async def search(self, q: str) -> SearchResult:
        return await self.workers.search(q)

    async def queue(self, team: str) -> TeamQueue | None:
        return await self.workers.queue(team)

    async def funnel(self, teams: Sequence[str]) -> Funnel:
        if self.prometheus is not None:
            return await self.prometheus.funnel(teams)
        return funnel(await self.workers.metrics(), teams)

    def history(self, lead_id: str) -> list[StageMove]:
        return self.feed.history(lead_id)

    def escalations(self, team: str | None = None) -> list[EscalationSeen]:
        return self.feed.escalations(team)

    def acked(self, alert_id: str) -> AckSent | None:
        return self._acks.get(alert_id)

    async def acknowledge(self, team: str, alert_id: str) -> AckSent:
        """Send "Alert Acknowledged" for an open alert of `team`, as `leadflow alerts ack`."""
        if (sent := self._acks.get(alert_id)) is not None:
            raise AlreadyAcknowledged(f"alert {alert_id} was already acknowledged from this "
                                      f"console (offset {sent.offset})")
        queue = await self.queue(team)
        item = queue.find(alert_id) if queue is not None else None
        if item is None:
            try:
                topic = re.escape(self.settings.topics.routing(team))
                await find_alert(self.bootstrap, f"^{topic}$", alert_id, timeout_s=10.0,
                                 security=self.security)
            except AlertNotFound:
                raise UnknownAlert(f"no alert {alert_id} in team {team}'s queue or on its "
                                   "routing topic") from None
            raise AlreadyAcknowledged(f"alert {alert_id} is not open in team {team}'s queue: "
                                      "it was acknowledged already")
        event = ack_event(alert_id, item.lead_id)
        partition, offset = await send_ack(self.bootstrap, self.settings.topics.crm, event,
                                           security=self.security)
        sent = AckSent(alert_id, item.lead_id, partition, offset, int(time.time() * 1000))
        self._acks[alert_id] = sent
        return sent

