"""The README's example commands exist as written: every `leadflow ...` it shows names a real
command, with options that command takes, and every benchmark script it shows accepts the
options it is shown with. The running examples themselves (demo, worker, collector, the
benchmarks) are exercised by their own tests; this one catches a README that drifted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from pipeline.cli.main import app

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
ROOT = typer.main.get_command(app)


def _spans() -> list[str]:
    """Inline code spans and fenced code lines that start a leadflow command."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    lines = [ln.split("#")[0].strip() for block in fenced for ln in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    out = []
    for text in [*lines, *inline]:
        for part in text.split("&&"):
            m = re.search(r"(?:^|/|\s)(leadflow\s.+)$", part.strip())
            if m and not m.group(1).startswith("leadflow."):
                out.append(m.group(1).strip())
    return out


Command = Any  # typer's own copy of click: groups are told by their `commands`


def _walk(words: list[str]) -> tuple[Command, list[str], list[str]]:
    """(command, the words naming it, the words after it)."""
    cmd: Command = ROOT
    path: list[str] = []
    rest = list(words)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        path.append(rest[0])
        cmd = cmd.commands[rest.pop(0)]
    return cmd, path, rest


def _resolve(words: list[str]) -> list[tuple[Command, list[str]]]:
    """The command(s) a span names (`kafka up / down / status` names three: each word after
    a slash replaces the last command word) and the options shown with each."""
    first, *others = " ".join(words).split(" / ")
    cmd, path, rest = _walk(first.split())
    found = [(cmd, rest)]
    for other in others:
        sibling, _, more = _walk([*path[:-1], *other.split()])
        found.append((sibling, more))
    return found


SPANS = _spans()


def test_the_readme_shows_leadflow_commands() -> None:
    # the parser found the commands table and the quick start, else the test checks nothing
    assert any(s.startswith("leadflow demo") for s in SPANS), SPANS
    assert any(s.startswith("leadflow deadletters") for s in SPANS), SPANS
    assert len(SPANS) > 20, SPANS


@pytest.mark.parametrize("span", sorted(set(SPANS)))
def test_readme_command_exists_with_its_options(span: str) -> None:
    words = span.replace("[", " ").replace("]", " ").split()[1:]
    assert words, span
    for cmd, rest in _resolve(words):
        assert cmd is not ROOT, (
            f"README shows `{span}`: `{words[0]}` is not a leadflow command")
        known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        shown = {w.split("=")[0] for w in rest if w.startswith("-") and w != "-"}
        assert shown <= known, (f"README shows `{span}`: {sorted(shown - known)} not options "
                                f"of `{cmd.name}` ({sorted(known)})")


def _scripts() -> list[tuple[str, list[str]]]:
    fenced = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    out = []
    for block in fenced:
        for line in block.splitlines():
            code = line.split("#")[0]
            m = re.search(r"(benchmarks/\w+\.py)(.*)$", code)
            if m:
                opts = re.findall(r"--[\w-]+", m.group(2))
                out.append((m.group(1), opts))
    return out


@pytest.mark.parametrize(("script", "options"), _scripts())
def test_readme_benchmark_script_takes_its_options(script: str, options: list[str]) -> None:
    out = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    missing = [o for o in options if o not in out.stdout]
    assert not missing, f"README shows {script} with {missing}, which --help does not list"
