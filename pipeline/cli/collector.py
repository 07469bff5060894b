"""`leadflow collector`: the Segment-compatible HTTP collector, as its own process."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from pipeline.cli.errors import fail
from pipeline.errors import LeadflowError
from pipeline.settings import Settings


def collector(
    host: Annotated[str | None, typer.Option(
        "--host", help="Interface to listen on (default: LEADFLOW_COLLECTOR_HOST).")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", help="Port to listen on (default: LEADFLOW_COLLECTOR_PORT, 8088).",
        min=0, max=65535)] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", help="debug, info, warning...")] = "info",
) -> None:
    """Serve the Segment HTTP tracking API (/v1/track, /v1/batch...) and /leadflow.js."""
    from aiohttp import web

    from pipeline.cli.bootstrap import command_bootstrap
    from pipeline.collector.app import create_app

    settings = Settings()
    logging.basicConfig(level=loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bootstrap = command_bootstrap(settings)
    except LeadflowError as exc:
        raise fail(exc) from None
    if settings.write_keys == {"dev-web-key": "web"}:
        typer.echo("warning: only the development write key `dev-web-key` is configured; "
                   "set LEADFLOW_WRITE_KEYS for production", err=True)
    app = create_app(settings, bootstrap=bootstrap)
    h = host or settings.collector_host
    p = settings.collector_port if port is None else port
    typer.echo(f"collector on http://{h}:{p} -> Kafka {bootstrap}")
    # access_log=None: access lines would carry referrers and query strings (personal data).
    # uvloop: asyncio's pure-Python loop (selector, transports, callbacks) is a visible
    # share of each request's CPU (figures in the README's collector benchmark).
    import uvloop

    web.run_app(app, host=h, port=p, access_log=None, print=None,
                loop=uvloop.new_event_loop())


def register(app: typer.Typer) -> None:
    """Add `collector` to the root app."""
    app.command("collector")(collector)
