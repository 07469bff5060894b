"""Faust's private internals are touched only in `pipeline/stream/faust_adapter.py`, and the
stream modules import each other without a cycle."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import aiokafka
import faust
import mode

from pipeline.stream import faust_adapter

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pipeline"
ADAPTER = PACKAGE / "stream" / "faust_adapter.py"
DEVKAFKA = PACKAGE / "devkafka"
_SELF_PRIVATE = re.compile(r"\bself\._([a-z]\w*)\s*[:=]|\bdef _([a-z]\w*)|^\s+_([a-z]\w*)\s*[:=]",
                           re.M)


def _private_names(roots: list[Path]) -> set[str]:
    """Private attribute and method names (`_x`) the sources under `roots` define."""
    names: set[str] = set()
    for root in roots:
        for path in root.rglob("*.py"):
            for m in _SELF_PRIVATE.finditer(path.read_text(errors="replace")):
                names.add(next(g for g in m.groups() if g))
    return names


def _faust_privates_used(source: str, faust_names: set[str], ours: set[str]) -> list[str]:
    """Uses of Faust's private names in `source`: `x._name` on anything but `self`, and
    `from faust... import _name`; names leadflow's own classes also define are left out."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            name = node.attr[1:]
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if name in faust_names and name not in ours:
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "faust", "aiokafka", "mode"):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("_")]
    return found


def test_no_module_but_the_adapter_touches_a_faust_private() -> None:
    libs = [Path(m.__file__).parent for m in (faust, aiokafka, mode) if m.__file__]
    faust_names = _private_names(libs)
    assert {"committed_offset", "db_for_partition", "ensure_producer"} <= faust_names
    ours = _private_names([PACKAGE])  # `rules._cache` is leadflow's own, whatever Faust has
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        # The development broker's tooling is not the worker (tests/stream/test_no_devkafka.py)
        if path == ADAPTER or DEVKAFKA in path.parents:
            continue
        used = _faust_privates_used(path.read_text(), faust_names, ours)
        if used:
            offenders[str(path.relative_to(REPO))] = used
    assert offenders == {}
    # and the check sees them where they are
    assert _faust_privates_used(ADAPTER.read_text(), faust_names, ours)


def _imports(path: Path) -> set[str]:
    """The pipeline modules `path` imports anywhere (top level, functions, TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        out.update(m for m in mods if m.startswith("pipeline."))
    return out


def test_the_stream_package_has_no_import_cycle() -> None:
    stream = PACKAGE / "stream"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p
               for p in stream.rglob("*.py") if p.name != "__init__.py"}
    graph = {name: {m for m in _imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    assert "pipeline.stream.web" in graph["pipeline.stream.app"]

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, nxt]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = {name: c for name in graph if (c := cycle_from(name)) is not None}
    assert cycles == {}


async def test_take_queued_takes_what_is_queued_up_to_the_max_and_acks_after_the_batch() -> None:
    app = faust.App("test-take-queued", broker="kafka://127.0.0.1:1", store="memory://")
    entered: asyncio.Queue[list[Any]] = asyncio.Queue()
    release: asyncio.Queue[None] = asyncio.Queue()

    async def body(stream: Any) -> None:
        async for batch in faust_adapter.take_queued(stream, 4, 60.0):
            await entered.put([(ev.value, ev.message.acked) for ev in batch])
            await release.get()

    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    agent = app.agent(name="take-queued")(body)
    async with agent.test_context() as test_agent:
        counter = asyncio.ensure_future(count_turns())
        # Idle: the one event is a batch at once, within a few turns of the event loop
        # (a window would hold it while the loop turns thousands of times).
        start = turns
        first = await test_agent.put(1, wait=False)
        assert await asyncio.wait_for(entered.get(), 10) == [(1, False)]
        assert turns - start < 50
        counter.cancel()
        # A backlog built while the batch is processed: the next batches are all of it,
        # in order, none over the max.
        for value in range(10, 20):
            await test_agent.put(value, wait=False)
        batches = []
        for _ in range(3):
            release.put_nowait(None)
            batches.append(await asyncio.wait_for(entered.get(), 10))
        assert first.message.acked  # acked once its batch's body went on
        assert [[v for v, _ in b] for b in batches] == [
            [10, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
        # and no event of a batch is acked while it is processed
        assert not any(acked for b in batches for _, acked in b)
        release.put_nowait(None)


def test_a_batch_is_behind_when_the_consumer_has_seen_records_past_it() -> None:
    from types import SimpleNamespace

    def stream(high: dict[str, int | None]) -> Any:
        def highwater(tp: str) -> int | None:
            if tp not in high:
                raise AssertionError("not assigned")  # as aiokafka does
            return high[tp]
        return SimpleNamespace(app=SimpleNamespace(consumer=SimpleNamespace(highwater=highwater)))

    def ev(tp: str, offset: int) -> Any:
        return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))

    batch = [ev("a", 3), ev("b", 7), ev("a", 4)]
    # caught up: the next offset, or one more for a transaction's commit marker
    assert not faust_adapter._behind(stream({"a": 5, "b": 8}), batch)
    assert not faust_adapter._behind(stream({"a": 6, "b": 9}), batch)
    # records past the batch's last of a partition; a partition gone or unknown counts not
    assert faust_adapter._behind(stream({"a": 7, "b": 8}), batch)
    assert faust_adapter._behind(stream({"b": 10}), batch)
    assert not faust_adapter._behind(stream({"a": None, "b": None}), batch)
