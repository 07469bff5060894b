"""`leadflow rules check FILE` and `leadflow backtest`: rules work for revenue operations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from pipeline.cli.errors import fail
from pipeline.core.rules import CompiledRules, load_default_rules, load_rules
from pipeline.errors import LeadflowError, RulesError

rules_app = typer.Typer(help="Validate scoring rules files.", no_args_is_help=True)


def _load(path: Path | None) -> CompiledRules:
    try:
        return load_rules(path) if path is not None else load_default_rules()
    except RulesError as exc:
        *first, last = exc.problems  # every problem in the file, so one edit fixes them all
        for problem in first:
            typer.echo(f"error: {problem}", err=True)
        raise fail(last) from None


@rules_app.command("check")
def check(file: Annotated[Path, typer.Argument(help="The rules YAML file.")]) -> None:
    """Validate a rules file and print a summary; if invalid, one line per problem, exit 1."""
    r = _load(file)
    s = r.summary()
    th = s["thresholds"]
    typer.echo(f"{file}: ok, rules version {r.version}")
    typer.echo(f"  rules: engagement {s['engagement']}, fit {s['fit']}, product {s['product']}, "
               f"negative {s['negative']}")
    typer.echo(f"  thresholds: mql {th['mql']:g}, hot {th['hot']:g}, recycle {th['recycle']:g}, "
               f"pql {th['pql']:g}")
    typer.echo(f"  triggers: {', '.join(s['triggers']) or 'none'}")
    typer.echo(f"  decay: {s['decay'] or 'none'}; alert cooldown {s['cooldown_ms'] // 60000} min")
    typer.echo(f"  channels: {', '.join(s['channels']) or 'none'} (else other)")


def backtest_cmd(
    events: Annotated[Path | None, typer.Argument(
        help="JSONL file of Segment messages (or --from-kafka).")] = None,
    rules: Annotated[Path | None, typer.Option(
        "--rules", help="Rules file (default: the shipped rules).")] = None,
    compare: Annotated[Path | None, typer.Option(
        "--compare", help="A second rules file to compare with.")] = None,
    from_kafka: Annotated[bool, typer.Option(
        "--from-kafka", help="Read the retained input topics instead of a file.")] = False,
    since: Annotated[str, typer.Option(
        "--since", help="With --from-kafka: records since this ISO time or age (30d, 12h).")
    ] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="JSON for programs.")] = False,
    costs: Annotated[Path | None, typer.Option(
        "--costs", help="YAML of each channel's cost over the period: CAC per channel.")
    ] = None,
) -> None:
    """Run the scoring core offline over past events and report (optionally compare)."""
    from pipeline.backtest import backtest, load_costs, render

    ra = _load(rules)
    rb = _load(compare) if compare is not None else None
    try:
        spend = load_costs(costs, ra) if costs is not None else None
    except LeadflowError as exc:
        raise fail(exc) from None
    if from_kafka:
        if events is not None:
            raise fail("give a JSONL file or --from-kafka, not both")
        try:
            loaded, source = _from_kafka(since, progress=not as_json)
        except LeadflowError as exc:
            raise fail(exc) from None
        report = backtest(None, ra, other=rb, progress=not as_json, loaded=loaded,
                          source=source, costs=spend)
    else:
        if events is None:
            raise fail("give a JSONL file of Segment messages, or --from-kafka")
        if not events.is_file():
            raise fail(f"{events}: no such file")
        report = backtest(events, ra, other=rb, progress=not as_json, costs=spend)
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        render(report)


def _from_kafka(since: str, *, progress: bool) -> tuple[Any, str]:
    """The input topics' records since `since`, with a progress bar on stderr."""
    import asyncio
    from datetime import UTC, datetime

    from pipeline.backtest_log import read_inputs
    from pipeline.cli.bootstrap import command_bootstrap
    from pipeline.kafka.security import KafkaSecurity
    from pipeline.models.timefmt import parse_time
    from pipeline.settings import Settings

    settings = Settings()
    start = parse_time(since, datetime.now(UTC))
    bootstrap = command_bootstrap(settings)
    topics = settings.topics.inputs()
    source = f"kafka {bootstrap} {', '.join(topics)} since {start.isoformat()}"

    async def go(advance: Any) -> Any:
        return await read_inputs(
            bootstrap, topics, int(start.timestamp() * 1000),
            security=KafkaSecurity.from_settings(settings),
            max_bytes=settings.max_message_bytes,
            max_future_skew_ms=int(settings.max_future_skew_s * 1000), progress=advance)

    if not progress:
        return asyncio.run(go(None)), source
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading input topics", total=None)
        loaded = asyncio.run(go(lambda done, total: bar.update(task, completed=done,
                                                                total=total)))
    return loaded, source


def register(app: typer.Typer) -> None:
    """Add `rules` and `backtest` to the root app."""
    app.add_typer(rules_app, name="rules")
    app.command("backtest")(backtest_cmd)
