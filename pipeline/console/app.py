"""The console's aiohttp application: routes, authentication and error pages.

Every answer is a page: a refused token, an unknown lead or alert, a malformed search or
a worker that does not answer get a page saying so with the matching status, never a
traceback. Nothing is logged per request: paths and searches carry lead ids and e-mails.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from pydantic import SecretStr

from pipeline.console import pages
from pipeline.console.sources import AckRefused, Backend, QueueItem
from pipeline.errors import ConfigError, InvalidQuery, LeadflowError
from pipeline.settings import Settings
from pipeline.stream.access import is_loopback
from pipeline.stream.clock import Clock
from pipeline.stream.leadview import search_text

log = logging.getLogger(__name__)

REALM = 'Basic realm="leadflow console", charset="UTF-8"'
BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_console_exposure(settings: Settings) -> None:
    """Refuse to serve lead pages beyond this machine without a secret."""
    if is_loopback(settings.console_host) or settings.console_token is not None:
        return
    raise ConfigError(
        f"LEADFLOW_CONSOLE_HOST={settings.console_host} would show lead pages (names, "
        "e-mails, companies) beyond this machine, and LEADFLOW_CONSOLE_TOKEN is not set: set "
        "LEADFLOW_CONSOLE_TOKEN to a long random secret (a browser then asks for it as the "
        "password), or bind LEADFLOW_CONSOLE_HOST=127.0.0.1")


def console_authorized(header: str | None, token: SecretStr | None) -> bool:
    """Whether an Authorization header carries the token, as a bearer token or as the
    password of basic auth (any user name); every header passes when no token is set."""
    if token is None:
        return True
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(given, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    # Constant time: the comparison must not tell how many leading characters matched.
    return hmac.compare_digest(given.encode(), token.get_secret_value().encode())


def page(status: int, title: str, detail: str, **headers: str) -> web.Response:
    return web.Response(text=pages.error_page(status, title, detail), status=status,
                        content_type="text/html", headers=headers)


def make_app(backend: Backend, *, token: SecretStr | None, teams: Sequence[str],
             clock: Clock | None = None) -> web.Application:
    """The console over `backend`; `token` guards every page but /healthz. SLA countdowns
    count on the worker's clock (its queue's `as_of`), else on `clock`."""
    clock = clock or Clock.starting(None)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/healthz" and not console_authorized(
                request.headers.get("Authorization"), token):
            return page(401, "Sign in", "This console needs its token: give it as the "
                        "password (any user name), or send 'Authorization: Bearer <token>' "
                        "(LEADFLOW_CONSOLE_TOKEN).", **{"WWW-Authenticate": REALM})
        if request.method == "POST" and not _same_origin(request):
            return page(403, "Refused", "This form was posted from another site.")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return page(404, "Not found", f"There is no page at {request.path}.")
        except web.HTTPMethodNotAllowed:
            return page(405, "Not allowed", f"{request.method} is not accepted here.")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return page(exc.status, exc.reason, exc.text or exc.reason)
        except InvalidQuery as exc:
            return page(400, "Malformed search", str(exc))
        except AckRefused as exc:
            return page(exc.status, "Not acknowledged", str(exc))
        except LeadflowError as exc:
            return page(502, "No answer from the pipeline", str(exc))
        except Exception:
            log.exception("console page %s failed", request.match_info.route.name or "?")
            return page(500, "Something went wrong",
                        "The console could not build this page; its log has the details.")

    app = web.Application(middlewares=[guard])
    app[BACKEND] = backend
    html = "text/html"

    async def index(_r: web.Request) -> web.Response:
        return web.Response(text=pages.index_page(teams), content_type=html)

    async def healthz(_r: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def team_list(_r: web.Request) -> web.Response:
        return web.Response(text=pages.teams_page(teams), content_type=html)

    async def search(r: web.Request) -> web.Response:
        q = search_text(r.query.get("q"))
        matches = await backend.search(q)
        return web.Response(text=pages.search_page(r.query.get("q", "").strip(), matches),
                            content_type=html)

    async def lead(r: web.Request) -> web.Response:
        lead_id = r.match_info["lead_id"]
        doc = await backend.lead(lead_id)
        if doc is None:
            return page(404, "Unknown lead", f"No lead with id {lead_id!r}: search by e-mail "
                        "or company instead.")
        alert_id = doc.get("last_alert_id")
        state: str = "none"
        open_item: QueueItem | None = None
        now_ms: int | None = None  # the worker's clock, when its queue answered
        if alert_id:
            state, open_item, now_ms = await _alert_state(
                backend, str(doc.get("team") or ""), str(alert_id))
        changes = await backend.score_history(lead_id)
        return web.Response(text=pages.lead_page(doc, backend.history(lead_id), state,
                                                 open_item, now_ms or clock.now_ms(),
                                                 changes),
                            content_type=html)

    async def queue(r: web.Request) -> web.Response:
        team = r.match_info["team"]
        q = await backend.queue(team)
        if q is None or team not in teams:
            return page(404, "Unknown team", f"No team {team!r} in the rules; teams: "
                        f"{', '.join(teams)}.")
        acked = {i.alert_id: s for i in q.items if (s := backend.acked(i.alert_id))}
        flash = f"Alert {r.query['acked']} acknowledged." if "acked" in r.query else ""
        return web.Response(text=pages.queue_page(q, backend.escalations(team), acked,
                                                  q.as_of_ms or clock.now_ms(), flash),
                            content_type=html)

    async def ack(r: web.Request) -> web.Response:
        team, alert_id = r.match_info["team"], r.match_info["alert_id"]
        if team not in teams:
            return page(404, "Unknown team", f"No team {team!r} in the rules.")
        await backend.acknowledge(team, alert_id)
        raise web.HTTPSeeOther(pages.url("teams", team) + f"?acked={alert_id}")

    async def funnel_view(_r: web.Request) -> web.Response:
        return web.Response(text=pages.funnel_page(await backend.funnel(teams)),
                            content_type=html)

    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/search", search)
    app.router.add_get("/leads/{lead_id}", lead)
    app.router.add_get("/teams", team_list)
    app.router.add_get("/teams/{team}", queue)
    app.router.add_post("/teams/{team}/alerts/{alert_id}/ack", ack)
    app.router.add_get("/funnel", funnel_view)
    return app


async def _alert_state(backend: Backend, team: str,
                       alert_id: str) -> tuple[str, QueueItem | None, int | None]:
    """What became of a lead's latest alert: open (with its item), acknowledged, escalated."""
    q = await backend.queue(team) if team else None
    item: QueueItem | None = q.find(alert_id) if q is not None else None
    as_of = q.as_of_ms if q is not None else None
    escalated = [e for e in backend.escalations(team) if e.alert_id == alert_id]
    if backend.acked(alert_id) is not None:
        return "acknowledged", None, as_of
    if item is not None:
        what = {"owned": "open", "unowned": "unowned", "waiting": "waiting for opening hours"}
        state = what.get(item.section, item.section)
        return (f"{state}, escalated" if escalated else state), item, as_of
    return "closed (acknowledged)", None, as_of


def _same_origin(request: web.Request) -> bool:
    # A form another site posts carries its own Origin; a browser always sends one on POST.
    # The host only: behind a TLS proxy the page is https while this server sees http.
    origin = request.headers.get("Origin")
    return origin is None or urllib.parse.urlsplit(origin).netloc == request.host
