"""`leadflow rules publish` against a real broker: what reaches the rules topic, and what not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.rules import parse_rules
from pipeline.published_rules import Published, read_topic
from tests.support.published import revised
from tests.support.workers import Isolated, make_isolated

pytestmark = pytest.mark.integration


async def publish(iso: Isolated, path: Path) -> tuple[int, str]:
    # In a thread: the command runs its own event loop, as it does from a shell.
    out = await asyncio.to_thread(
        CliRunner().invoke, app, ["rules", "publish", str(path)], env=iso.env)
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise out.exception
    return out.exit_code, out.output


async def on_topic(iso: Isolated) -> list[tuple[int, str]]:
    recs = await read_topic(iso.bootstrap, iso.settings.topics.rules)
    return [(r.revision, r.rules.version) for r in recs if isinstance(r, Published)]


async def test_publish_validates_refuses_going_back_and_writes_the_topic(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home")
    two, three = tmp_path / "two.yaml", tmp_path / "three.yaml"
    two.write_text(revised(2))
    three.write_text(revised(3, mql=55))
    v2, v3 = parse_rules(revised(2)).version, parse_rules(revised(3, mql=55)).version

    code, out = await publish(iso, two)
    assert code == 0, out
    assert f"published rules version {v2} (revision 2) to {iso.settings.topics.rules}" in out
    code, out = await publish(iso, two)
    assert code == 0 and "is already the published one; nothing to do" in out, out
    code, out = await publish(iso, three)
    assert code == 0 and f"(was {v2}, revision 2)" in out, out

    code, out = await publish(iso, two)
    assert code == 1
    assert out.strip() == (
        f"error: revision 2 (rules version {v2}) goes backwards: the published rules are "
        f"revision 3 (rules version {v3}); set `revision:` above 3")

    broken = tmp_path / "broken.yaml"
    broken.write_text(revised(4).replace("    points: 35\n", "    points: lots\n")
                      .replace("  hot: 90 ", "  hot: hot ", 1))
    code, out = await publish(iso, broken)
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 2, out
    assert all(ln.startswith(f"error: {broken}:") for ln in lines)
    assert await on_topic(iso) == [(2, v2), (3, v3)]
