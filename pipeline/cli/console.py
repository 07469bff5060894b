"""`leadflow console`: the web pages for revenue teams (lead pages, team queues, funnel)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from pipeline.cli.errors import fail
from pipeline.errors import ConfigError, LeadflowError
from pipeline.settings import Settings


async def serve(settings: Settings, bootstrap: str, stop: asyncio.Event) -> None:
    """Serve the console until `stop` is set."""
    from aiohttp import web

    from pipeline.console.app import make_app
    from pipeline.console.sources import LiveBackend
    from pipeline.core.rules import load_default_rules, load_rules

    rules = load_rules(settings.rules_file) if settings.rules_file else load_default_rules()
    backend = LiveBackend(settings, bootstrap)
    app = make_app(backend, token=settings.console_token,
                   teams=[t.name for t in rules.routing.teams])
    runner = web.AppRunner(app, access_log=None)  # paths and searches carry personal data
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.console_host, settings.console_port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {settings.console_host}:"
                              f"{settings.console_port} ({exc.strerror}): another console? "
                              "set LEADFLOW_CONSOLE_PORT or --port") from None
        await backend.start()
        workers = ", ".join(backend.workers.urls)
        typer.echo(f"leadflow console on http://{settings.console_host}:{settings.console_port}"
                   f" (workers: {workers}; "
                   f"{'token required' if settings.console_token else 'no token: loopback only'})",
                   err=True)
        await stop.wait()
    finally:
        await backend.stop()
        await runner.cleanup()


def register(app: typer.Typer) -> None:
    """Add `console` to the root app."""

    @app.command()
    def console(
        host: Annotated[str | None, typer.Option(
            help="Bind address (LEADFLOW_CONSOLE_HOST, default 127.0.0.1).")] = None,
        port: Annotated[int | None, typer.Option(
            help="Port (LEADFLOW_CONSOLE_PORT, default 6070).")] = None,
    ) -> None:
        """Web pages for revenue teams: lead pages and search, team queues with an
        Acknowledge button, the funnel KPIs as charts. Reads the workers' API and Kafka."""
        from pipeline.cli.bootstrap import command_bootstrap
        from pipeline.console.app import check_console_exposure

        overrides: dict[str, object] = {}
        if host is not None:
            overrides["console_host"] = host
        if port is not None:
            overrides["console_port"] = port

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            await serve(settings, bootstrap, stop)

        try:
            settings = Settings(**overrides)  # type: ignore[arg-type]
            check_console_exposure(settings)  # before any broker is looked for
            bootstrap = command_bootstrap(settings)
            asyncio.run(main())
        except LeadflowError as exc:
            raise fail(exc) from None
