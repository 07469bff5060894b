"""`leadflow deadletters list|show|replay`: the operator's view of the dead-letter topic."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer

from pipeline.cli.errors import fail
from pipeline.errors import LeadflowError
from pipeline.kafka.security import KafkaSecurity
from pipeline.settings import Settings

deadletters_app = typer.Typer(
    help="Count, show and replay dead letters (events.deadletter).", no_args_is_help=True)


def _bootstrap(settings: Settings) -> str:
    from pipeline.cli.bootstrap import command_bootstrap

    return command_bootstrap(settings)


@deadletters_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    last: Annotated[int, typer.Option(
        "--last", min=0, help="Also list this many newest dead letters, one line each.")] = 10,
) -> None:
    """Counts by reason and source topic (newest first), then the newest dead letters."""
    from pipeline.deadletters.replay import read_all, summarize

    settings = Settings()
    topic = settings.topics.deadletter
    try:
        letters = asyncio.run(read_all(_bootstrap(settings), topic,
                                       security=KafkaSecurity.from_settings(settings)))
    except LeadflowError as exc:
        raise fail(exc) from None
    groups = summarize(letters)
    newest = sorted(letters, key=lambda s: s.letter.received_at, reverse=True)[:last]
    if as_json:
        sys.stdout.write(orjson.dumps({
            "topic": topic, "total": len(letters), "groups": [g.to_dict() for g in groups],
            "newest": [{"position": s.where, "reason": s.letter.reason,
                        "source_topic": s.letter.source_topic, "origin": s.letter.origin,
                        "received_at": s.letter.to_dict()["received_at"],
                        "replay_id": s.letter.replay_id} for s in newest],
        }).decode() + "\n")
        return
    typer.echo(f"{len(letters)} dead letters on {topic}")
    if not groups:
        return
    typer.echo(f"{'count':>7}  {'reason':<20} {'source topic':<28} {'newest':<24} "
               "failed after replay")
    for g in groups:
        d = g.to_dict()
        typer.echo(f"{g.count:>7}  {g.reason:<20} {g.source_topic:<28} {d['newest']:<24} "
                   f"{g.replayed_failed}")
    if newest:
        typer.echo("\nnewest (partition:offset, for `show` and `replay --offsets`):")
        for s in newest:
            dl = s.letter
            extra = f"  replay {dl.replay_id}" if dl.replay_id else ""
            typer.echo(f"  {s.where:<10} {dl.to_dict()['received_at']}  {dl.reason:<18} "
                       f"{dl.source_topic} ({dl.origin}){extra}")


@deadletters_app.command("show")
def show_cmd(
    position: Annotated[str, typer.Argument(
        help="PARTITION:OFFSET on the dead-letter topic, or OFFSET with --partition.")],
    partition: Annotated[int, typer.Option("--partition", "-p", min=0)] = 0,
) -> None:
    """Print one dead letter as JSON, its original value decoded (it may hold personal data)."""
    from pipeline.deadletters.replay import DeadLetterError, letter_dict, read_one

    settings = Settings()
    p_text, sep, o_text = position.rpartition(":")
    try:
        part, off = (int(p_text), int(o_text)) if sep else (partition, int(position))
    except ValueError:
        raise fail(DeadLetterError(
            f"{position!r}: expected PARTITION:OFFSET (e.g. 0:17), as `leadflow deadletters "
            "list` prints")) from None
    try:
        stored = asyncio.run(read_one(_bootstrap(settings), settings.topics.deadletter, part,
                                      off, security=KafkaSecurity.from_settings(settings)))
    except LeadflowError as exc:
        raise fail(exc) from None
    sys.stdout.write(orjson.dumps(letter_dict(stored), option=orjson.OPT_INDENT_2).decode()
                     + "\n")


@deadletters_app.command("replay")
def replay_cmd(
    reason: Annotated[list[str] | None, typer.Option(
        "--reason", help="Only this reason code (repeatable).")] = None,
    source_topic: Annotated[list[str] | None, typer.Option(
        "--source-topic", help="Only letters from this topic (repeatable).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Dead-lettered at or after: ISO 8601 or an age (2h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="Dead-lettered before: ISO 8601 or an age.")] = None,
    offsets: Annotated[str | None, typer.Option(
        "--offsets", help="Only these positions: P:O or P:A-B, comma separated.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Also replay letters that already failed again after a replay.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be replayed; produce nothing.")] = False,
) -> None:
    """Produce the selected dead letters' original bytes back on their source topics, once,
    with a `leadflow-replay` header; fix the setting or rule that refused them first."""
    from pipeline.deadletters.replay import (
        new_replay_id,
        parse_offsets,
        read_all,
        replay,
        select,
    )
    from pipeline.models.timefmt import parse_time

    settings = Settings()
    now = datetime.now(UTC)
    security = KafkaSecurity.from_settings(settings)
    try:
        bootstrap = _bootstrap(settings)
        letters = asyncio.run(read_all(bootstrap, settings.topics.deadletter,
                                       security=security))
        sel = select(
            letters, reasons=reason or (), source_topics=source_topic or (),
            since=parse_time(since, now) if since else None,
            until=parse_time(until, now) if until else None,
            offsets=parse_offsets(offsets) if offsets else None, force=force)
        notes = []
        if sel.failed_after_replay:
            notes.append(f"{len(sel.failed_after_replay)} skipped: they failed again after a "
                         "replay (--force replays them)")
        if sel.duplicates:
            notes.append(f"{sel.duplicates} skipped: more letters of a message already chosen")
        replay_id = new_replay_id(now)
        if dry_run or not sel.chosen:
            verb = "would replay" if dry_run else "nothing to replay:"
            typer.echo(f"{verb} {len(sel.chosen)} of {len(letters)} dead letters"
                       + "".join(f"; {n}" for n in notes))
            for s in sel.chosen[:50] if dry_run else ():
                typer.echo(f"  {s.where:<10} {s.letter.reason:<18} -> {s.letter.source_topic}")
            return
        started = time.monotonic()
        last = [started]

        def progress(done: int, total: int) -> None:
            # a line a second at most: long replays show they are moving, short ones stay quiet
            t = time.monotonic()
            if done == total or t - last[0] >= 1.0:
                last[0] = t
                typer.echo(f"replay {replay_id}: {done}/{total} produced", err=True)

        counts = asyncio.run(replay(bootstrap, sel.chosen, replay_id, security=security,
                                    progress=progress))
    except LeadflowError as exc:
        raise fail(exc) from None
    where = ", ".join(f"{n} to {t}" for t, n in sorted(counts.items()))
    typer.echo(f"replay {replay_id}: {sum(counts.values())} produced ({where}) in "
               f"{time.monotonic() - started:.1f} s" + "".join(f"; {n}" for n in notes))


def register(app: typer.Typer) -> None:
    """Add `deadletters` to the root app."""
    app.add_typer(deadletters_app, name="deadletters")
