"""The rules file: the shipped default is valid; every error names the file, line and path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.event import Event
from pipeline.core.rules import (
    ENGAGEMENT,
    PRODUCT,
    default_rules_text,
    load_default_rules,
    load_rules,
    parse_duration,
    parse_rules,
)
from pipeline.errors import RulesError

BASE = """\
thresholds: {mql: 60, hot: 90, recycle: 20, pql: 40}
"""


def test_default_rules_are_valid_and_complete() -> None:
    r = load_default_rules()
    md = r.model
    assert (r.mql, r.hot, r.recycle, r.pql) == (60, 90, 20, 40)
    ids = {x.id for x in [*md.engagement, *md.fit, *md.product, *md.negative]}
    for rid in ("demo_request", "talk_to_sales", "quote_request", "pricing_page",
                "document_download", "account_created", "blog_subscription",
                "newsletter_subscription", "email_course", "purchase", "trial_started",
                "teammates_invited", "feature_limit_hit", "unsubscribed", "email_bounced",
                "spam_complaint", "competitor_domain", "student_domain", "out_of_icp_title"):
        assert rid in ids, rid
    points = {x.id: x.points for x in md.engagement}
    assert (points["document_download"], points["account_created"], points["blog_subscription"],
            points["newsletter_subscription"], points["email_course"], points["purchase"]) == (
        5, 5, 7, 3, 5, 35)
    assert points["pricing_page"] > points["blog_post"]
    assert r.summary()["triggers"] == ["demo_request", "quote_request", "talk_to_sales",
                                       "talk_to_sales_form"]
    assert r.decay is not None and r.decay.half_life_ms == 30 * 86_400_000
    assert [t.name for t in md.routing.teams] == ["enterprise", "emea", "sales"]
    assert md.routing.sla_seconds("instant") == 300


@pytest.mark.parametrize(("text", "ms"), [("30m", 1_800_000), ("12h", 43_200_000),
                                          ("7d", 604_800_000), ("2w", 1_209_600_000),
                                          ("500ms", 500), ("45s", 45_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["7", "7 days", "0d", "-1d", "d", 7, True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def _err(text: str) -> str:
    with pytest.raises(RulesError) as ei:
        parse_rules(text, "rules.yaml")
    return str(ei.value)


def test_wrong_type_names_path_and_line() -> None:
    text = BASE + """\
engagement:
  - id: a
    match: {name: A}
    points: 1
  - id: b
    match: {name: B}
    points: lots
"""
    assert _err(text) == ("rules.yaml:8 engagement[1] (id: b).points: Input should be a valid "
                          "integer, unable to parse string as an integer")


def test_missing_field_names_parent_line() -> None:
    text = BASE + "engagement:\n  - id: a\n    points: 3\n"
    assert _err(text) == "rules.yaml:3 engagement[0] (id: a).match: Field required"


def test_unknown_key_is_refused() -> None:
    # `points` is there: not what `pionts` meant; the message lists the keys a rule takes.
    text = BASE + "engagement:\n  - id: a\n    match: {name: A}\n    pionts: 3\n    points: 1\n"
    assert _err(text) == ("rules.yaml:5 engagement[0] (id: a).pionts: unknown key 'pionts' "
                          "(known: cap, description, id, match, points, trigger)")


def test_misspelt_key_says_what_it_meant_and_not_that_the_key_is_missing() -> None:
    text = BASE + ("engagement:\n  - id: a\n    match: {name: A}\n    points: 1\n"
                   "  - id: pricing_page\n    match: {type: page, url: '*/pricing*'}\n"
                   "    pionts: 10\n")
    with pytest.raises(RulesError) as ei:
        parse_rules(text, "rules.yaml")
    assert ei.value.problems == (
        "rules.yaml:8 engagement[1] (id: pricing_page).pionts: unknown key 'pionts': "
        "did you mean 'points'?",)


def test_every_problem_in_one_run_in_file_order() -> None:
    text = BASE + """\
engagement:
  - id: a
    match: {name: A}
    points: lots
  - id: pricing_page
    match: {type: page, url_regex: '('}
    pionts: 10
  - id: c
    descripton: x
fit:
  - id: f
    when: {trait: title, bogus: 1}
    points: 5
negative:
  - {id: n, match: {name: B}, points: 5}
"""
    with pytest.raises(RulesError) as ei:
        parse_rules(text, "rules.yaml")
    expected = (
        "rules.yaml:5 engagement[0] (id: a).points: Input should be a valid integer, unable "
        "to parse string as an integer",
        "rules.yaml:7 engagement[1] (id: pricing_page).match: url_regex does not compile: "
        "missing ), unterminated subpattern at position 0",
        "rules.yaml:8 engagement[1] (id: pricing_page).pionts: unknown key 'pionts': did you "
        "mean 'points'?",
        "rules.yaml:9 engagement[2] (id: c).match: Field required",
        "rules.yaml:9 engagement[2] (id: c).points: Field required",
        "rules.yaml:10 engagement[2] (id: c).descripton: unknown key 'descripton': did you "
        "mean 'description'?",
        "rules.yaml:13 fit[0] (id: f).when.bogus: unknown key 'bogus' (known: any_of, "
        "contains_any, domain_endswith, domain_in, free_email, range, trait)",
        "rules.yaml:16 negative[0] (id: n).points: Input should be less than 0",
    )
    assert ei.value.problems == expected
    assert str(ei.value) == "\n".join(expected)


def test_every_duplicate_id_is_reported() -> None:
    text = BASE + ("engagement:\n  - {id: x, match: {name: A}, points: 1}\n"
                   "  - {id: y, match: {name: A}, points: 1}\n"
                   "negative:\n  - {id: x, match: {name: B}, points: -1}\n"
                   "  - {id: y, match: {name: B}, points: -1}\n")
    with pytest.raises(RulesError) as ei:
        parse_rules(text, "rules.yaml")
    assert ei.value.problems == (
        "rules.yaml:6 negative[0] (id: x).id: duplicate rule id 'x' (first used in "
        "engagement[0])",
        "rules.yaml:7 negative[1] (id: y).id: duplicate rule id 'y' (first used in "
        "engagement[1])")


def test_bad_duration_in_cap() -> None:
    text = BASE + ("engagement:\n  - id: a\n    match: {name: A}\n    points: 1\n"
                   "    cap: {points: 5, window: 7 days}\n")
    assert _err(text) == ("rules.yaml:6 engagement[0] (id: a).cap.window: '7 days' is not a "
                          "duration (e.g. 30m, 12h, 7d, 2w)")


def test_thresholds_order() -> None:
    msg = _err("thresholds: {mql: 60, hot: 50, recycle: 20, pql: 40}\n")
    assert msg == "rules.yaml:1 thresholds: thresholds must satisfy recycle < mql <= hot"


def test_missing_thresholds() -> None:
    assert _err("engagement: []\n") == "rules.yaml:1 thresholds: Field required"


def test_duplicate_rule_ids_across_sections() -> None:
    text = BASE + ("engagement:\n  - {id: x, match: {name: A}, points: 1}\n"
                   "negative:\n  - {id: x, match: {name: B}, points: -1}\n")
    assert _err(text) == ("rules.yaml:5 negative[0] (id: x).id: duplicate rule id 'x' "
                          "(first used in engagement[0])")


def test_negative_points_must_be_negative() -> None:
    text = BASE + "negative:\n  - id: n\n    match: {name: A}\n    points: 5\n"
    assert _err(text) == "rules.yaml:5 negative[0] (id: n).points: Input should be less than 0"


def test_trait_condition_needs_exactly_one_test() -> None:
    text = BASE + "fit:\n  - id: f\n    when: {trait: title}\n    points: 5\n"
    assert _err(text).startswith("rules.yaml:4 fit[0] (id: f).when: give exactly one of")


def test_bad_regex() -> None:
    text = BASE + "engagement:\n  - id: a\n    match: {type: page, url_regex: '('}\n    points: 1\n"
    assert _err(text).startswith(
        "rules.yaml:4 engagement[0] (id: a).match: url_regex does not compile")


def test_decay_needs_one_kind() -> None:
    text = BASE + "decay:\n  idle_after: 14d\n"
    assert _err(text) == ("rules.yaml:2 decay: decay needs exactly one of half_life or "
                          "points_per_period")


def test_decay_cannot_include_fit() -> None:
    text = BASE + "decay:\n  half_life: 30d\n  groups: [fit]\n"
    assert _err(text).startswith("rules.yaml:4 decay.groups[0]: Input should be")


def test_yaml_syntax_error_has_line() -> None:
    msg = _err(BASE + "engagement:\n  - id: a\n   points: [1\n")
    assert msg.startswith("rules.yaml:") and "(YAML)" in msg
    assert "\n" not in msg


def test_top_level_must_be_mapping() -> None:
    assert _err("- 1\n- 2\n") == "rules.yaml:1 (top level): the rules file must be a mapping"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")


def test_load_rules_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(BASE + "groups: {fit: {weight: -1}}\n")
    with pytest.raises(RulesError) as ei:
        load_rules(p)
    assert str(ei.value) == f"{p}:2 groups.fit.weight: Input should be greater than or equal to 0"


def test_routing_section_is_validated_with_line_numbers() -> None:
    teams = "[{name: emea, match: {countries: [DE]}}, {name: sales}]"
    r = parse_rules(BASE + f"routing: {{teams: {teams}}}\n")
    assert r.teams() == ["emea", "sales"]
    assert parse_rules(BASE).teams() == ["sales"]  # default: one catch-all team
    with pytest.raises(RulesError, match=r"routing.*catch-all"):
        parse_rules(BASE + "routing: {teams: [{name: emea, match: {countries: [DE]}}]}\n")
    with pytest.raises(RulesError, match=r"rules.yaml:\d+ routing.sla.instant"):
        parse_rules(BASE + "routing:\n  teams: [{name: sales}]\n  sla: {instant: soon}\n")


def test_index_and_match() -> None:
    r = parse_rules(BASE + """\
engagement:
  - {id: any_page, match: {type: page}, points: 1}
  - {id: pricing, match: {type: page, url: "*/pricing*"}, points: 10}
  - {id: cpc, match: {type: page, utm: {medium: CPC}}, points: 2}
  - {id: demo, match: {name: [Demo Requested, Talk To Sales]}, points: 30,
     trigger: {stage: mql, hot: true}}
product:
  - {id: trial, match: {name: Trial Started, source: product}, points: 20}
""")
    page = Event("m", "l", "page", 0, url="https://x.com/Pricing?a=1", utm={"medium": "cpc"})
    assert [c.id for c in r.match(page)] == ["any_page", "pricing", "cpc"]
    assert [c.id for c in r.match(Event("m", "l", "page", 0, url="https://x.com/blog"))] == [
        "any_page"]
    demo = r.match(Event("m", "l", "track", 0, name="Talk To Sales"))
    assert [(c.id, c.group, c.trigger_stage, c.trigger_hot) for c in demo] == [
        ("demo", ENGAGEMENT, "mql", True)]
    assert [c.group for c in r.match(Event("m", "l", "track", 0, name="Trial Started",
                                           source="product"))] == [PRODUCT]
    assert r.match(Event("m", "l", "track", 0, name="Trial Started", source="web")) == ()
    assert r.match(Event("m", "l", "track", 0, name="Other")) == ()


def test_rules_version_names_the_content_not_the_layout() -> None:
    text = default_rules_text()
    v = parse_rules(text, "a.yaml").version
    assert re.fullmatch(r"1-[0-9a-f]{12}", v), v
    # comments, blank lines and another file name: the same rules, the same version
    assert parse_rules("# tuned with sales, Q4\n\n" + text, "b.yaml").version == v
    # one point value changed: another version
    changed = text.replace("    points: 35\n", "    points: 36\n", 1)
    assert changed != text
    assert parse_rules(changed, "a.yaml").version != v
    assert load_default_rules().version == v


def test_rules_version_is_the_same_in_every_process() -> None:
    # sets (free-mail domains...) iterate in a per-process hash order: it must not leak in
    code = "from pipeline.core.rules import load_default_rules as l; print(l().version)"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed},
                           check=True).stdout.strip() for seed in ("1", "2", "3")}
    assert seen == {load_default_rules().version}
