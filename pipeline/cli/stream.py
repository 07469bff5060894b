"""`leadflow worker`, `leadflow simulate` and `leadflow demo`."""

from __future__ import annotations

import asyncio

import typer

from pipeline.cli.errors import fail
from pipeline.errors import LeadflowError
from pipeline.settings import Settings
from pipeline.simulator import DEMO_RATE, DEMO_VISITORS


def register(app: typer.Typer) -> None:
    """Add the stream commands to the root app."""

    @app.command()
    def worker(
        loglevel: str = typer.Option("info", help="Faust log level."),
        web_port: int | None = typer.Option(
            None, help="Web port (lead API, /metrics); with --processes, the first of N."),
        processes: int = typer.Option(
            1, min=1, help="Worker processes of this app on this machine (one core each), "
            "each with its own state folder under the state dir and the next web port."),
    ) -> None:
        """Run a stream worker: consume the input topics, score, emit stage changes and alerts."""
        from pipeline.cli.bootstrap import command_bootstrap
        from pipeline.stream.access import check_web_exposure

        try:
            settings = Settings(web_port=web_port) if web_port is not None else Settings()
            # Before any broker is looked for or started: a refusal must come first.
            check_web_exposure(settings)
            # Resolved here, not in the worker: only the CLI may fall back to the local broker.
            if processes == 1:
                from pipeline.stream.worker import run

                run(settings, bootstrap=command_bootstrap(settings), loglevel=loglevel)
                return
            from pipeline.stream import processes as multi

            children = multi.plan(settings, processes)
            bootstrap = command_bootstrap(settings)
            for c in children:
                typer.echo(f"process {c.index}: web port {c.web_port or 'any'}, "
                           f"state {c.state_dir}")
            code = multi.supervise(
                [(multi.child_command(loglevel), multi.child_env(c, bootstrap=bootstrap))
                 for c in children],
                say=lambda text: typer.echo(text, err=True))
        except LeadflowError as exc:
            raise fail(exc) from None
        raise typer.Exit(code)

    @app.command()
    def simulate(
        rate: float = typer.Option(200.0, help="Messages per second (0: as fast as possible)."),
        visitors: int = typer.Option(
            DEMO_VISITORS, help="Visitor journeys to play (the default fits the shipped "
            "teams' daily capacity)."),
        seed: int = typer.Option(7, help="Random seed: the same seed gives the same traffic."),
    ) -> None:
        """Produce realistic synthetic Segment traffic to the input topics."""
        from pipeline.cli.bootstrap import command_bootstrap
        from pipeline.kafka.security import KafkaSecurity
        from pipeline.simulator import run as sim_run

        settings = Settings()
        t = settings.topics
        try:
            bootstrap = command_bootstrap(settings)
        except LeadflowError as exc:
            raise fail(exc) from None
        topics = {"web": t.web, "email": t.email, "product": t.product, "crm": t.crm}
        sent = asyncio.run(
            sim_run(bootstrap, topics, rate=rate, visitors=visitors, seed=seed,
                    security=KafkaSecurity.from_settings(settings))
        )
        typer.echo(f"sent {sent} messages")

    @app.command()
    def demo(
        rate: float = typer.Option(DEMO_RATE, help="Simulated messages per second."),
        visitors: int = typer.Option(
            DEMO_VISITORS, help="Visitor journeys to play (the default fits the shipped "
            "teams' daily capacity)."),
        web_port: int = typer.Option(6066, help="Worker web port (lead API, /metrics)."),
        reset: bool = typer.Option(
            False, "--reset", help="First delete earlier runs' state (the worker's tables, "
            "the local broker's data), saying what goes."),
    ) -> None:
        """The main job, locally: broker (if none configured), topics, a worker, the simulator,
        and a live view of stage changes and alerts. Ctrl-C stops everything it started.
        Every run plays new leads, so a second run shows as much as the first."""
        from pipeline.demo import run_demo

        try:
            run_demo(Settings(web_port=web_port), rate=rate, visitors=visitors, reset=reset)
        except LeadflowError as exc:
            raise fail(exc) from None
