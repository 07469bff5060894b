"""Entry point of the `leadflow` console script: one sub-command group per job."""

from __future__ import annotations

import typer

from pipeline.cli import alerts, bench, collector, console, deadletters, kafka, rules, stream

app = typer.Typer(
    name="leadflow",
    help="Event-streaming lead scoring and routing on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
alerts.register(app)
bench.register(app)
collector.register(app)
console.register(app)
deadletters.register(app)
kafka.register(app)
rules.register(app)
stream.register(app)


if __name__ == "__main__":
    app()
