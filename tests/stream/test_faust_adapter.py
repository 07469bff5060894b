"""Faust's private internals are touched only in `pipeline/stream/faust_adapter.py`, and the
stream modules import each other without a cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import aiokafka
import faust
import mode

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
