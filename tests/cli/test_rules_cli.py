"""`leadflow rules check`: a summary for a good file; for a bad one, a line per problem, exit 1."""

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
        f"{p}: ok, rules version {load_default_rules().version}, revision 0",
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
    assert "engagement[13] (id: purchase).points: Input should be a valid integer" in lines[0]


def test_check_reports_every_problem_with_rule_ids(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    text = default_rules_text()
    assert text.count("    points: 35\n") == 1 and text.count("    points: 1\n") >= 1
    # A misspelt key in one rule and a wrong type in another: both, in one run.
    p.write_text(text.replace("    points: 35\n", "    pionts: 35\n")
                 .replace("    points: 1\n", "    points: one\n", 1))
    out = CliRunner().invoke(app, ["rules", "check", str(p)])
    assert out.exit_code == 1
    lines = text.splitlines()
    one = next(i for i, ln in enumerate(lines) if ln == "    points: 1") + 1
    pionts = next(i for i, ln in enumerate(lines) if ln == "    points: 35") + 1
    assert out.output.splitlines() == [
        f"error: {p}:{one} engagement[0] (id: page_view).points: Input should be a valid "
        "integer, unable to parse string as an integer",
        f"error: {p}:{pionts} engagement[13] (id: purchase).pionts: unknown key 'pionts': "
        "did you mean 'points'?",
    ]


def test_check_missing_file(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["rules", "check", str(tmp_path / "none.yaml")])
    assert out.exit_code == 1
    assert "cannot read rules file" in out.output


def test_check_names_the_revision(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text("revision: 3\n" + default_rules_text())
    out = CliRunner().invoke(app, ["rules", "check", str(p)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].endswith(", revision 3")
