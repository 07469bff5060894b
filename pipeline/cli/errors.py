"""How every `leadflow` command reports a failure: one ``error: ...`` line on stderr, exit 1."""

from __future__ import annotations

import typer

from pipeline.errors import LeadflowError


def fail(problem: LeadflowError | str) -> typer.Exit:
    """Print ``error: <problem>`` and return the exit to raise (``raise fail(exc) from None``).

    A message for people, never a traceback.
    """
    typer.echo(f"error: {problem}", err=True)
    return typer.Exit(1)
