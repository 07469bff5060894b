"""The test suite's own layout: shared helpers live in tests/support or a conftest."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imports_of_test_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    return [m for m in names if m.startswith("tests.")
            and m.rsplit(".", 1)[-1].startswith("test_")]


def test_no_test_module_imports_another() -> None:
    # A helper imported from a test module runs that module's tests' imports and hides
    # where shared code lives: it belongs in tests/support.
    offenders = {str(p.relative_to(TESTS)): found for p in sorted(TESTS.rglob("*.py"))
                 if "node_modules" not in p.parts and (found := _imports_of_test_modules(p))}
    assert offenders == {}
