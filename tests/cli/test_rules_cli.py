"""`leadflow rules check`: a summary for a good file, one line and exit 1 for a bad one."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.rules import default_rules_text, load_default_rules


def test_check_ok(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text(default_rules_text())
    out = CliRunner().invoke(app, ["rules", "check", str(p)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:3] == [
        f"{p}: ok, rules version {load_default_rules().version}",
        "  rules: engagement 20, fit 8, product 3, negative 7",
        "  thresholds: mql 60, hot 90, recycle 20, pql 40",
    ]
    assert "demo_request" in out.output


def test_check_bad_file_one_line(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text(default_rules_text().replace("    points: 35\n", "    points: lots\n"))
    out = CliRunner().invoke(app, ["rules", "check", str(p)])
    assert out.exit_code == 1
    lines = out.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {p}:")
    assert "engagement[13].points: Input should be a valid integer" in lines[0]


def test_check_missing_file(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["rules", "check", str(tmp_path / "none.yaml")])
    assert out.exit_code == 1
    assert "cannot read rules file" in out.output
