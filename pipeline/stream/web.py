"""Web views on the worker: the lead API, liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol, cast

import faust
from faust import web
from faust.exceptions import SameNode

from pipeline.core.rules import CompiledRules
from pipeline.errors import InvalidQuery
from pipeline.metrics.registry import Metrics
from pipeline.models.timefmt import iso_offset
from pipeline.settings import Settings
from pipeline.stream import faust_adapter
from pipeline.stream.access import authorized
from pipeline.stream.clock import Clock
from pipeline.stream.leadview import (
    MAX_MATCHES,
    history_document,
    lead_document,
    search_leads,
    search_text,
)
from pipeline.stream.progress import RecoveryProgress
from pipeline.stream.rules_feed import RulesFeed
from pipeline.stream.stages.assign import team_queue
from pipeline.stream.standby import StandbyFollower


def free_web_port(host: str) -> int:
    """A port nothing listens on at ``host`` now: ``--web-port 0`` resolved before Faust
    starts, which refuses port 0 and must advertise the real port to route lead requests."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Served(Protocol):
    """What the views read of the worker (`app.LeadflowApp` is one)."""

    settings: Settings
    rules: CompiledRules
    metrics: Metrics
    recovery_progress: RecoveryProgress
    rules_feed: RulesFeed
    clock: Clock
    standby: StandbyFollower

    @property
    def app(self) -> faust.App: ...

    @property
    def leads(self) -> Any: ...

    @property
    def owners(self) -> Any: ...


def install(lf: Served) -> None:
    """Register the views on the app's web server."""
    app = lf.app
    leads = lf.leads
    token = lf.settings.api_token

    def refused(view: web.View, request: web.Request) -> web.Response | None:
        # Checked before routing: a forwarded request carries the same header (Faust's
        # router copies the headers), so the owning worker checks it again.
        if authorized(request.headers.get("Authorization"), token):
            return None
        return view.json({"error": "this path needs 'Authorization: Bearer <token>' "
                                   "(the worker's LEADFLOW_API_TOKEN)"},
                         status=401, headers={"WWW-Authenticate": 'Bearer realm="leadflow"'})

    async def on_owner(table: Any, key: str, server: web.Web,
                       request: web.Request) -> web.Response | None:
        """The answer of the worker that owns ``key`` in ``table``; None when it is this one."""
        # Faust's router picks the worker that owns the key's partition from the
        # producer's metadata of the changelog topic, which it only has once it has
        # written to it: fetch it first so that a fresh worker routes correctly.
        changelog = table.changelog_topic.get_topic_name()
        await faust_adapter.kafka_producer(app.producer).partitions_for(changelog)
        try:
            return await app.router.route_req(table.name, key, server, request)
        except SameNode:
            return None

    async def lead_answer(view: web.View, request: web.Request, lead_id: str,
                          render: Callable[[Any], Any]) -> web.Response:
        """A view of one lead: the token checked, the owning worker asked, 404 if unknown."""
        if (denied := refused(view, request)) is not None:
            return denied
        routed = await on_owner(leads, lead_id, view.web, request)
        if routed is not None:
            return routed
        stored = leads.get(lead_id.encode())
        if stored is None:
            return view.json({"error": f"no lead with id {lead_id!r}"}, status=404)
        return view.json(render(stored))

    @app.page("/leads/{lead_id}")
    class LeadView(web.View):
        """GET /leads/{id}: stage, scores by group, breakdown, last events, owner."""

        async def get(self, request: web.Request, lead_id: str) -> web.Response:
            return await lead_answer(self, request, lead_id,
                                     lambda stored: lead_document(lead_id, stored, lf.rules))

    @app.page("/leads/{lead_id}/history")
    class LeadHistoryView(web.View):
        """GET /leads/{id}/history: the lead's recent score changes (`history_document`)."""

        async def get(self, request: web.Request, lead_id: str) -> web.Response:
            return await lead_answer(self, request, lead_id, lambda stored: history_document(
                lead_id, stored, ledger=lf.settings.score_ledger))

    @app.page("/search")
    class SearchView(web.View):
        """GET /search?q=: leads of this worker's partitions whose id, e-mail or company
        contains the text (each worker answers for its own; the console asks them all)."""

        async def get(self, request: web.Request) -> web.Response:
            if (denied := refused(self, request)) is not None:
                return denied
            try:
                q = search_text(request.query.get("q"))
            except InvalidQuery as exc:
                return self.json({"error": str(exc)}, status=400)
            # In slices, yielding between them: a scan of a big table must not stall the agents.
            found: list[Any] = []
            items = faust_adapter.raw_items(leads)
            while len(found) < MAX_MATCHES and (chunk := list(islice(items, 1000))):
                found += search_leads(q, chunk, lf.rules, limit=MAX_MATCHES - len(found))
                await asyncio.sleep(0)
            return self.json({"query": q, "matches": [m.to_dict() for m in found]})

    @app.page("/teams/{team}/queue")
    class TeamQueueView(web.View):
        """GET /teams/{team}/queue: alerts waiting for the team to open, unowned, and owned."""

        async def get(self, request: web.Request, team: str) -> web.Response:
            if (denied := refused(self, request)) is not None:
                return denied
            if team not in {t.name for t in lf.rules.routing.teams}:
                return self.json({"error": f"no team {team!r} in the rules"}, status=404)
            owners = lf.owners
            routed = await on_owner(owners, team, self.web, request)
            if routed is not None:
                return routed
            # as_of: the worker's clock (a test's fast clock too), that SLA countdowns count from
            return self.json({**team_queue(team, owners.get(team.encode())),
                              "as_of": iso_offset(lf.clock.now_ms())})

    @app.page("/healthz")
    class Health(web.View):
        """Liveness: the process serves requests."""

        async def get(self, request: web.Request) -> web.Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(web.View):
        """Readiness: partitions assigned and every table recovered."""

        async def get(self, request: web.Request) -> web.Response:
            state = readiness(lf)
            return self.json(state, status=200 if state["ready"] else 503)

    @app.page("/metrics")
    class MetricsView(web.View):
        """Prometheus text exposition of this worker's registry."""

        async def get(self, request: web.Request) -> web.Response:
            body, content_type = lf.metrics.exposition()
            # The full header: aiohttp refuses a content_type argument with parameters.
            return self.bytes(body, headers={"Content-Type": content_type})


def readiness(lf: Served) -> dict[str, Any]:
    """Whether the worker is ready to serve: assigned, not rebalancing, not recovering."""
    app = lf.app
    recovery = cast(Any, app.tables).recovery
    assigned = len(app.consumer.assignment()) if app.consumer else 0
    recovering = bool(recovery.in_recovery)
    rebalancing = bool(app.rebalancing)
    return {
        "ready": assigned > 0 and not recovering and not rebalancing,
        "assigned_partitions": assigned,
        "recovering": recovering,
        "rebalancing": rebalancing,
        "rules_version": lf.rules.version,
        # the rules in use, where from, and the last published version ignored (why)
        "rules": lf.rules_feed.status(),
        # records left per table and partition while recovering, with a rate and time left
        "recovery": lf.recovery_progress.snapshot(),
        "standbys": standby_positions(lf.standby),
    }


def standby_positions(follower: StandbyFollower) -> dict[str, dict[str, dict[str, int | None]]]:
    """Per table and standby partition of this worker: `stored`, the offset of the last
    changelog record its store holds (its persisted offset; -1 before the first), and `end`,
    the changelog's end offset (the last stable offset under exactly-once) as the standby
    follower last saw it (None before its first fetch).

    The follower writes each fetch with its offset in one batch, so `stored` is both what
    the store holds and where a takeover would start from.
    """
    return {table: {str(p): {"stored": pos.stored, "end": pos.end}
                    for p, pos in parts.items()}
            for table, parts in follower.positions().items()}
