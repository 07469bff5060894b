"""`leadflow alerts tail|ack|queue|forward`: the account executive's side of routing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar, cast

import typer

from pipeline.cli.errors import fail
from pipeline.errors import ConfigError, LeadflowError
from pipeline.kafka.security import KafkaSecurity
from pipeline.settings import Settings

alerts_app = typer.Typer(
    help="Follow, acknowledge and forward routing alerts.", no_args_is_help=True
)

T = TypeVar("T")


def _bootstrap(settings: Settings) -> str:
    from pipeline.cli.bootstrap import command_bootstrap

    return command_bootstrap(settings)


def _run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` so it can finish cleanly."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread can own signals (an embedding program or a test may run
            # the command in a worker thread); there, --max/--timeout are the way to stop.
            with contextlib.suppress(ValueError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            return await main(stop)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def _max_retries(value: str) -> int | None:
    if value.strip().lower() in {"unbounded", "inf", "none"}:
        return None
    try:
        n = int(value)
    except ValueError:
        raise typer.BadParameter("a number >= 0 or 'unbounded'") from None
    if n < 0:
        raise typer.BadParameter("a number >= 0 or 'unbounded'")
    return n


@alerts_app.command("tail")
def tail_cmd(
    team: Annotated[list[str], typer.Option(
        "--team", "-t", help="Team whose routing.<team> topic to follow (repeatable).")],
    from_start: Annotated[bool, typer.Option(
        "--from-start", help="Start at the oldest alert (default: only new alerts).")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per line (JSON Lines), for programs.")] = False,
    escalations: Annotated[bool, typer.Option(
        "--escalations", help="Also show routing.escalations.")] = False,
    max_messages: Annotated[int | None, typer.Option(
        "--max", min=1, help="Stop after this many alerts.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="Stop after this many seconds.")] = None,
) -> None:
    """Print routing alerts as they arrive, one line each, until Ctrl-C (or --max/--timeout)."""
    from rich.console import Console

    from pipeline.alerts.tail import json_line, readable_line, tail

    settings = Settings()
    topics = [settings.topics.routing(t) for t in team]
    if escalations:
        topics.append(settings.topics.escalations)
    console = Console(highlight=False, soft_wrap=True)

    def sink(topic: str, raw: bytes | None) -> None:
        if as_json:
            # Plain stdout, flushed per line, so a pipe reader sees each alert at once.
            sys.stdout.write(json_line(raw) + "\n")
            sys.stdout.flush()
        else:
            console.print(readable_line(topic, raw))

    try:
        bootstrap = _bootstrap(settings)
        _run_until_signal(lambda stop: tail(
            bootstrap, topics, sink, from_start=from_start, max_messages=max_messages,
            timeout_s=timeout, stop=stop, security=KafkaSecurity.from_settings(settings),
        ))
    except LeadflowError as exc:
        raise fail(exc) from None


@alerts_app.command("ack")
def ack_cmd(
    alert_id: Annotated[str, typer.Argument(help="The alert's alert_id.")],
    lead: Annotated[str | None, typer.Option(
        "--lead", help="The alert's lead id (skips searching the routing topics).")] = None,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="The acknowledging rep.")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds to search the routing topics for the alert.")] = 15.0,
) -> None:
    """Acknowledge an alert: send "Alert Acknowledged" to the CRM topic (stops its SLA timer)."""
    import orjson

    from pipeline.alerts import routing_pattern
    from pipeline.alerts.ack import ack_event, find_alert, send_ack

    settings = Settings()
    if not alert_id.strip():
        raise fail(ConfigError("the alert id is empty"))

    async def main() -> tuple[dict[str, Any], int, int]:
        bootstrap = _bootstrap(settings)
        security = KafkaSecurity.from_settings(settings)
        lead_id = lead
        if lead_id is None:
            alert = await find_alert(
                bootstrap, routing_pattern(settings.topics.routing_prefix), alert_id,
                timeout_s=timeout, security=security,
            )
            lead_id = str(alert["lead_id"])
        event = ack_event(alert_id, lead_id, owner)
        partition, offset = await send_ack(
            bootstrap, settings.topics.crm, event, security=security)
        return event, partition, offset

    try:
        event, partition, offset = asyncio.run(main())
    except LeadflowError as exc:
        raise fail(exc) from None
    typer.echo(f"sent to {settings.topics.crm} [{partition}@{offset}]: "
               f"{orjson.dumps(event).decode()}")


@alerts_app.command("forward")
def forward_cmd(
    team: Annotated[str, typer.Option("--team", "-t", help="Team whose alerts to forward.")],
    url: Annotated[str, typer.Option("--url", help="Webhook URL (POST, JSON body).")],
    group: Annotated[str | None, typer.Option(
        "--group", help="Consumer group (default leadflow-forwarder-<team>).")] = None,
    max_retries: Annotated[str, typer.Option(
        "--max-retries", help="Retries of transient failures per alert, or 'unbounded'; "
        "an alert that runs out is parked on the dead-letter topic.")] = "unbounded",
    backoff_base: Annotated[float, typer.Option(
        "--backoff-base", min=0.0, help="First retry delay bound in seconds (doubles).")] = 0.5,
    backoff_cap: Annotated[float, typer.Option(
        "--backoff-cap", min=0.0, help="Largest retry delay in seconds.")] = 30.0,
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", min=0.1, help="Seconds per HTTP request.")] = 10.0,
    session_timeout_ms: Annotated[int, typer.Option(
        "--session-timeout-ms", min=1000, help="Kafka group session timeout: how soon a killed "
        "forwarder's partitions move to another one.")] = 10_000,
    max_alerts: Annotated[int | None, typer.Option(
        "--max", min=1, help="Stop after this many alerts are delivered or parked.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level.")] = "info",
    fmt: Annotated[str, typer.Option(
        "--format", help="json: the alert as it is; slack: a message for a Slack (or "
        "compatible) incoming webhook.")] = "json",
) -> None:
    """Deliver a team's alerts to a webhook, at least once and in order (Idempotency-Key)."""
    from pipeline.alerts.forward import ForwardConfig, Forwarder

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Keep third-party chatter (which may print URLs with tokens) out of the default output.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    from pipeline.alerts.formats import FORMATS

    if fmt not in FORMATS:
        raise fail(ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}"))
    if not url.startswith(("http://", "https://")):
        raise fail(ConfigError(f"--url must be an http(s) URL, got {url.split(':')[0]}:..."))
    settings = Settings()
    retries = _max_retries(max_retries)
    try:
        bootstrap = _bootstrap(settings)
        cfg = ForwardConfig(
            bootstrap=bootstrap,
            topic=settings.topics.routing(team),
            url=url,
            group_id=group or f"leadflow-forwarder-{team}",
            deadletter_topic=settings.topics.deadletter,
            max_retries=retries,
            backoff_base_s=backoff_base,
            backoff_cap_s=backoff_cap,
            request_timeout_s=request_timeout,
            session_timeout_ms=session_timeout_ms,
            max_alerts=max_alerts,
            security=KafkaSecurity.from_settings(settings),
            format=cast(Any, fmt),
        )
        stats = _run_until_signal(lambda stop: Forwarder(cfg, stop).run())
    except LeadflowError as exc:
        raise fail(exc) from None
    typer.echo(
        f"forwarder stopped: {stats.delivered} delivered, {stats.parked} parked, "
        f"{stats.attempts} attempts, {stats.abandoned} abandoned (not committed)",
        err=True,
    )


@alerts_app.command("queue")
def queue_cmd(
    team: Annotated[str, typer.Option("--team", "-t", help="The team whose queue to show.")],
    url: Annotated[str | None, typer.Option(
        "--url", help="A worker's web address (default: this machine's worker, "
        "LEADFLOW_WEB_PORT).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The queue as one JSON object.")] = False,
) -> None:
    """Show a team's open alerts: waiting for opening hours, unowned (and why), owned."""
    import orjson

    from pipeline.alerts.queue import fetch_queue, format_queue

    settings = Settings()
    host = "127.0.0.1" if settings.web_host in ("0.0.0.0", "::", "") else settings.web_host
    try:
        doc = fetch_queue(url or f"http://{host}:{settings.web_port}", team,
                          token=settings.api_token)
    except LeadflowError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(orjson.dumps(doc).decode())
    else:
        for line in format_queue(doc):
            typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add `alerts` to the root app."""
    app.add_typer(alerts_app, name="alerts")
