"""`leadflow rules check FILE` and `leadflow backtest`: rules work for revenue operations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from pipeline.cli.errors import fail
from pipeline.core.rules import CompiledRules, load_default_rules, load_rules, parse_rules
from pipeline.errors import LeadflowError, RulesError

if TYPE_CHECKING:
    from pipeline.backtest import Loaded
    from pipeline.tune import Proposal

rules_app = typer.Typer(help="Validate scoring rules files.", no_args_is_help=True)


def _load(path: Path | None) -> CompiledRules:
    try:
        return load_rules(path) if path is not None else load_default_rules()
    except RulesError as exc:
        raise _problems(exc) from None


def _problems(exc: RulesError) -> typer.Exit:
    """Every problem in the file, one line each, so one edit fixes them all."""
    *first, last = exc.problems
    for problem in first:
        typer.echo(f"error: {problem}", err=True)
    return fail(last)


@rules_app.command("check")
def check(file: Annotated[Path, typer.Argument(help="The rules YAML file.")]) -> None:
    """Validate a rules file and print a summary; if invalid, one line per problem, exit 1."""
    r = _load(file)
    s = r.summary()
    th = s["thresholds"]
    typer.echo(f"{file}: ok, rules version {r.version}, revision {r.model.revision}")
    typer.echo(f"  rules: engagement {s['engagement']}, fit {s['fit']}, product {s['product']}, "
               f"negative {s['negative']}")
    typer.echo(f"  thresholds: mql {th['mql']:g}, hot {th['hot']:g}, recycle {th['recycle']:g}, "
               f"pql {th['pql']:g}")
    typer.echo(f"  triggers: {', '.join(s['triggers']) or 'none'}")
    typer.echo(f"  decay: {s['decay'] or 'none'}; alert cooldown {s['cooldown_ms'] // 60000} min")
    typer.echo(f"  channels: {', '.join(s['channels']) or 'none'} (else other)")


@rules_app.command("publish")
def publish(file: Annotated[Path, typer.Argument(help="The rules YAML file.")]) -> None:
    """Validate a rules file and publish it to the rules topic; every worker switches to it.

    Refused (exit 1, nothing published): a file `rules check` refuses, every problem shown;
    a revision below the published one, or the published revision with other rules.
    """
    import asyncio

    from pipeline import published_rules as pr
    from pipeline.cli.bootstrap import command_bootstrap
    from pipeline.kafka.security import KafkaSecurity
    from pipeline.kafka.topics import ensure_topics, topic_specs
    from pipeline.settings import Settings

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: cannot read rules file: {exc}") from None
    rules = _parsed(text, str(file))
    settings = Settings()
    topic = settings.topics.rules
    security = KafkaSecurity.from_settings(settings)

    async def go() -> str:
        bootstrap = command_bootstrap(settings)
        # The rules topic, and the routing topics of teams these rules may add: only
        # those, so the publishing principal needs no access to the worker's topics.
        mine = {topic, *(settings.topics.routing(team) for team in rules.teams())}
        await ensure_topics(bootstrap, [spec for spec in topic_specs(settings, rules.teams())
                                        if spec.name in mine], security=security)
        current = pr.latest(await pr.read_topic(bootstrap, topic, security=security))
        if not pr.check_publish(rules, current):
            return (f"{file}: rules version {rules.version} (revision "
                    f"{rules.model.revision}) is already the published one; nothing to do")
        offset = await pr.produce(bootstrap, topic, pr.message(rules, text, file.name),
                                  security=security)
        was = (f" (was {current.rules.version}, revision {current.revision})"
               if current is not None else "")
        return (f"{file}: published rules version {rules.version} (revision "
                f"{rules.model.revision}) to {topic} at offset {offset}{was}")

    try:
        typer.echo(asyncio.run(go()))
    except LeadflowError as exc:
        raise fail(exc) from None


@rules_app.command("tune")
def tune(
    events: Annotated[Path | None, typer.Argument(
        help="JSONL file of Segment messages (or --from-kafka).")] = None,
    rules: Annotated[Path | None, typer.Option(
        "--rules", help="Rules file (default: the shipped rules).")] = None,
    team: Annotated[str | None, typer.Option(
        "--team", help="Fit this team only (default: every team).")] = None,
    capacity: Annotated[int | None, typer.Option(
        "--capacity", help="Alerts per working day instead of the reps' daily_cap sum.")
    ] = None,
    from_kafka: Annotated[bool, typer.Option(
        "--from-kafka", help="Read the retained input topics instead of a file.")] = False,
    since: Annotated[str, typer.Option(
        "--since", help="With --from-kafka: records since this ISO time or age (30d, 12h).")
    ] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="JSON for programs.")] = False,
) -> None:
    """Propose hot and MQL lines whose alerts over past events fit the teams' capacity."""
    import dataclasses

    from pipeline.tune import TuneError, propose

    r = _load(rules)
    loaded, _ = _past_events(events, from_kafka, since, progress=not as_json)
    try:
        p = propose(loaded.events, r, team=team, per_day=capacity)
    except TuneError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(orjson.dumps(dataclasses.asdict(p), option=orjson.OPT_INDENT_2).decode())
    else:
        _render_tune(p)
    if p.proposed is None:
        raise typer.Exit(2)  # no line fits: not an error in the input, but not a proposal


def _past_events(events: Path | None, from_kafka: bool, since: str, *,
                 progress: bool) -> tuple[Loaded, str | None]:
    """The events a backtest runs over, and where from (None: the file, by its path)."""
    from pipeline.backtest import load_events

    if from_kafka:
        if events is not None:
            raise fail("give a JSONL file or --from-kafka, not both")
        try:
            return _from_kafka(since, progress=progress)
        except LeadflowError as exc:
            raise fail(exc) from None
    if events is None:
        raise fail("give a JSONL file of Segment messages, or --from-kafka")
    if not events.is_file():
        raise fail(f"{events}: no such file")
    return load_events(events), None


def _render_tune(p: Proposal) -> None:
    now, new = p.now, p.proposed
    echo = typer.echo
    echo(f"events from {p.first_day} to {p.last_day}")
    for c in p.capacities:
        echo(f"team {c.team}: capacity {c.total} alerts over {c.working_days} working day(s) "
             f"of {c.days} ({c.per_working_day}); now {now.alerts.get(c.team, 0)}"
             + (f", proposed {new.alerts.get(c.team, 0)}" if new is not None else ""))
    for name, why in p.unfitted.items():
        echo(f"team {name}: not fitted ({why.removeprefix(f'team {name!r}: ')})")
    echo(f"now: hot {now.lines.hot:g}, mql {now.lines.mql:g}")
    if new is None:
        floor = ", ".join(f"{t} {n}" for t, n in p.floor.items())
        echo("no hot line fits: the alerts no score line holds back (instant triggers and "
             f"PQL) exceed the capacity even at the highest line ({floor}); raise the "
             "capacity (daily_cap, more reps) or narrow the triggers")
        return
    if new.lines == now.lines:
        echo("the current lines fit: nothing to change")
    else:
        echo(f"proposed: hot {new.lines.hot:g}, mql {new.lines.mql:g} (set thresholds.hot and "
             "thresholds.mql, raise revision, then leadflow rules publish)")
    echo("funnel, now -> proposed:")
    echo(f"  leads moved to mql: {now.mql_moves} -> {new.mql_moves}")
    for kind in ("instant", "hot_score", "pql"):
        echo(f"  {kind} alerts: {now.alerts_by_kind.get(kind, 0)} -> "
             f"{new.alerts_by_kind.get(kind, 0)}")
    for st in sorted(set(now.stages) | set(new.stages)):
        echo(f"  leads now in {st}: {now.stages.get(st, 0)} -> {new.stages.get(st, 0)}")


def _parsed(text: str, source: str) -> CompiledRules:
    try:
        return parse_rules(text, source)
    except RulesError as exc:
        raise _problems(exc) from None


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
    loaded, source = _past_events(events, from_kafka, since, progress=not as_json)
    report = backtest(events, ra, other=rb, progress=not as_json, loaded=loaded,
                      source=source, costs=spend)
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
