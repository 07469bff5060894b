"""`leadflow kafka up|down|status` (the local development broker) and `leadflow topics create`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from pipeline.cli.errors import fail
from pipeline.errors import LeadflowError
from pipeline.settings import Settings

kafka_app = typer.Typer(help="The local development Kafka broker (no Docker).",
                        no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics leadflow uses.", no_args_is_help=True)


@kafka_app.command("up")
def up(
    port: Annotated[int | None, typer.Option(
        "--port", help="Broker port (default: 9092 if free, else any free port; 0: any).",
        min=0, max=65535)] = None,
) -> None:
    """Start the local broker (downloads its jars on the first run); reuse a running one."""
    from pipeline.devkafka.broker import BrokerAlreadyRunning
    from pipeline.devkafka.local import start_local_broker

    try:
        state = start_local_broker(Settings(), port=port)
    except BrokerAlreadyRunning as exc:
        typer.echo(f"Kafka {exc.state.version} already running at {exc.state.bootstrap} "
                   f"(pid {exc.state.pid})")
        return
    except LeadflowError as exc:
        raise fail(exc) from None
    typer.echo(f"Kafka {state.version} running at {state.bootstrap} (pid {state.pid}, "
               f"log {state.log})")


@kafka_app.command("down")
def down() -> None:
    """Stop the local broker (its data stays for the next `up`)."""
    from pipeline.devkafka.local import stop_local_broker

    try:
        was_running = stop_local_broker(Settings())
    except LeadflowError as exc:
        raise fail(exc) from None
    typer.echo("Kafka stopped" if was_running else "Kafka was not running")


@kafka_app.command("status")
def status() -> None:
    """Say whether the local broker runs; exit code 0 if it does, 1 if not."""
    from pipeline.devkafka.broker import broker_answers
    from pipeline.devkafka.local import local_status

    try:
        state = local_status(Settings())
    except LeadflowError as exc:
        raise fail(exc) from None
    if state is None:
        typer.echo("Kafka is not running (start it with `leadflow kafka up`)")
        raise typer.Exit(1)
    answers = broker_answers(state.bootstrap, timeout_s=5.0)
    health = "answering" if answers else "NOT answering metadata requests"
    typer.echo(f"Kafka {state.version} running at {state.bootstrap} (pid {state.pid}), {health}")
    if not answers:
        raise typer.Exit(1)


@topics_app.command("create")
def create(
    teams: Annotated[str | None, typer.Option(
        "--teams", help="Comma-separated teams that get a routing.<team> topic "
        "(default: the teams of the configured rules file).")] = None,
) -> None:
    """Create every missing leadflow topic (inputs, outputs, routing, internal, changelogs)."""
    from pipeline.cli.bootstrap import command_bootstrap
    from pipeline.kafka.security import KafkaSecurity
    from pipeline.kafka.topics import ensure_topics, topic_specs

    settings = Settings()
    try:
        if teams is None:
            from pipeline.stream.worker import load_configured_rules

            names = load_configured_rules(settings).teams()
        else:
            names = [t.strip() for t in teams.split(",") if t.strip()]
        bootstrap = command_bootstrap(settings)
        report = asyncio.run(ensure_topics(
            bootstrap, topic_specs(settings, teams=names),
            security=KafkaSecurity.from_settings(settings)))
    except LeadflowError as exc:
        raise fail(exc) from None
    for name in report.created:
        typer.echo(f"created  {name}")
    for name in report.existing:
        typer.echo(f"exists   {name}")
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"topics at {bootstrap}: {report}")


def register(app: typer.Typer) -> None:
    """Add `kafka` and `topics` to the root app."""
    app.add_typer(kafka_app, name="kafka")
    app.add_typer(topics_app, name="topics")
