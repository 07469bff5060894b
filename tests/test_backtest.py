"""Backtest over a small JSONL file: counts, bad lines, JSON output, --compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from pipeline.backtest import backtest
from pipeline.cli.main import app
from pipeline.core.rules import default_rules_text, load_default_rules, load_rules, parse_rules
from tests.support.backtest import messages
from tests.support.scenario import ts as _ts


def write(tmp_path: Path) -> Path:
    p = tmp_path / "events.jsonl"
    lines = [orjson.dumps(m) for m in messages()]
    lines.insert(4, b'{"type": "track", "messageId": "x"')  # line 5: truncated JSON
    lines.insert(6, b"")  # blank lines are not messages
    lines.append(orjson.dumps({"type": "track", "messageId": "y", "userId": "z",
                               "timestamp": _ts(11)}))  # no event name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_report_counts(tmp_path: Path) -> None:
    rep = backtest(write(tmp_path), load_default_rules())
    assert rep["input"]["events"] == 12
    assert rep["input"]["invalid"] == 2
    assert [(b["line"], b["reason"]) for b in rep["input"]["invalid_lines"]] == [
        (5, "bad_json"), (15, "invalid")]
    res = rep["result"]
    assert res["leads"] == 2
    assert {k: v for k, v in res["stages"].items() if v} == {"visitor": 1, "opportunity": 1}
    assert res["per_day"] == {"2026-03-02": {"mql": 1, "sql": 0, "pql": 0, "hot_alerts": 2,
                                             "pql_alerts": 0}}
    assert res["alerts"] == {"instant": 1, "hot_score": 1, "pql": 0, "total": 2}
    assert res["score_buckets"]["100+"] == 1 and res["score_buckets"]["0-10"] == 1
    assert sum(res["score_buckets"].values()) == 2


def test_cli_json_and_compare(tmp_path: Path) -> None:
    events = write(tmp_path)
    strict = tmp_path / "strict.yaml"
    # a stricter sales line and no instant demo trigger: Ada is no MQL before sales accepts
    strict.write_text(default_rules_text()
                      .replace("mql: 60 ", "mql: 150 ").replace("hot: 90 ", "hot: 200 ")
                      .replace("trigger: {stage: mql, hot: true}", "description: no trigger"))
    load_rules(strict)  # still a valid file
    out = CliRunner().invoke(app, ["backtest", "--json", "--compare", str(strict), str(events)])
    assert out.exit_code == 0, out.output
    rep = orjson.loads(out.stdout)
    assert rep["input"]["invalid"] == 2
    diff = rep["compare"]["diff"]
    # under the strict rules Lead Accepted is refused (no MQL yet) and so is the opportunity
    assert diff["stages"]["opportunity"] == {"a": 1, "b": 0, "delta": -1}
    assert diff["stages"]["lead"] == {"a": 0, "b": 1, "delta": 1}
    assert diff["leads_changed"] == 1
    assert diff["changed_sample"] == [{"lead_id": "ada", "a": "opportunity", "b": "lead"}]
    assert diff["alerts"] == {"a": 2, "b": 0, "delta": -2, "leads_with_different_alerts": 1}


def test_cli_tables(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["backtest", str(write(tmp_path))])
    assert out.exit_code == 0, out.output
    assert "2 leads\n" in out.output and "Leads per stage" in out.output
    assert "line 5: bad_json" in out.output
    assert "opportunity" in out.output


def test_cli_bad_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("thresholds: {mql: 1}\n")
    out = CliRunner().invoke(app, ["backtest", "--rules", str(bad), str(write(tmp_path))])
    assert out.exit_code == 1
    assert f"{bad}:1 thresholds.hot: Field required" in out.output


def test_compare_scores_per_lead_movers_and_team_alerts(tmp_path: Path) -> None:
    text = default_rules_text()
    blog = '  - id: blog_post\n    match: {type: page, url: "*/blog/*"}\n    points: 2'
    assert blog in text, "the shipped blog_post rule moved: update this test"
    richer = parse_rules(text.replace(blog, blog.replace("points: 2", "points: 7")), "b.yaml")
    diff = backtest(write(tmp_path), load_default_rules(), other=richer)["compare"]["diff"]
    # Bob (never identified): 2 page views + 2 blog posts: 2 + 2*2 = 6, then 2 + min(2*7, cap
    # 10) = 12. Ada: one blog post, 2 -> 7, her engagement (81 -> 86) under the group max 100.
    assert diff["movers"] == [
        {"lead_id": "anon:anon-bob", "a": 6.0, "b": 12.0, "delta": 6.0,
         "stage_a": "visitor", "stage_b": "visitor"},
        {"lead_id": "ada", "a": 121.0, "b": 126.0, "delta": 5.0,
         "stage_a": "opportunity", "stage_b": "opportunity"}]
    assert {k: v for k, v in diff["score_deltas"].items() if v} == {"+5 to +10": 2}
    # Ada (US, 800 employees) goes to the catch-all team `sales`: her demo request and her
    # hot score, under both rules sets
    assert diff["alerts_per_team_per_day"] == {"a": {"2026-03-02": {"sales": 2}},
                                               "b": {"2026-03-02": {"sales": 2}}}


def test_alias_and_repeats_are_stitched_as_the_stream_does(tmp_path: Path) -> None:
    msgs = [
        {"type": "page", "messageId": "p1", "anonymousId": "anon-cy", "timestamp": _ts(1),
         "name": "Pricing", "context": {"page": {"url": "https://example.com/pricing"}}},
        {"type": "page", "messageId": "p1", "anonymousId": "anon-cy", "timestamp": _ts(1),
         "name": "Pricing", "context": {"page": {"url": "https://example.com/pricing"}}},
        {"type": "alias", "messageId": "a1", "previousId": "anon-cy", "userId": "cy",
         "timestamp": _ts(2)},
    ]
    p = tmp_path / "alias.jsonl"
    p.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n")
    rep = backtest(p, load_default_rules())
    # one lead, cy: the pricing page once (the SDK's retry is the same messageId), credited
    # to the user the alias named; page_view 1 + pricing_page 10
    assert rep["result"]["leads"] == 1
    assert rep["result"]["score_buckets"]["10-20"] == 1


def test_campaign_costs_are_no_lead_of_the_backtest(tmp_path: Path) -> None:
    msgs = [
        {"type": "page", "messageId": "p1", "userId": "cy", "timestamp": _ts(1),
         "name": "Pricing", "context": {"page": {"url": "https://example.com/pricing"}}},
        {"type": "track", "messageId": "c1", "userId": "marketing-ops", "timestamp": _ts(2),
         "event": "Campaign Cost", "properties": {"channel": "paid_search", "amount": 500}},
    ]
    p = tmp_path / "costs.jsonl"
    p.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n")
    rep = backtest(p, load_default_rules())
    assert rep["result"]["leads"] == 1  # cy only: the cost's sender is not scored


def test_team_capacity_against_the_alerts_each_day(tmp_path: Path) -> None:
    text = default_rules_text()
    reps = ("        - {id: rep-sam, capacity: 3}\n        - {id: rep-ava, capacity: 2}\n"
            "        - {id: rep-kai, capacity: 1, daily_cap: 10}\n")
    assert reps in text, "the shipped sales team moved: update this test"
    one = parse_rules(text.replace(reps, "        - {id: rep-sam, capacity: 1, daily_cap: 1}\n"),
                      "one.yaml")
    shipped = backtest(write(tmp_path), load_default_rules())["result"]["team_capacity"]
    # enterprise: 25 + 15; sales: two of its reps have no cap; no alert for either that day
    # but Ada's two (she is a `sales` lead)
    assert shipped["enterprise"] == {"daily_cap": 40, "busiest_day": 0, "days_over_cap": 0,
                                     "days": 1}
    assert shipped["sales"] == {"daily_cap": None, "busiest_day": 2, "days_over_cap": 0,
                                "days": 1}
    capped = backtest(write(tmp_path), one)["result"]["team_capacity"]["sales"]
    assert capped == {"daily_cap": 1, "busiest_day": 2, "days_over_cap": 1, "days": 1}


def _journeys(tmp_path: Path) -> Path:
    """Cy: a paid search click, a newsletter click, a demo (MQL), an opportunity of 50,000
    and a deal won of 20,000. Di: an organic search visit and a demo (MQL)."""
    def page(mid: str, who: str, t: int, url: str, referrer: str = "") -> dict[str, Any]:
        return {"type": "page", "messageId": mid, "anonymousId": f"anon-{who}",
                "timestamp": _ts(t), "context": {"page": {"url": url, "referrer": referrer}}}

    def track(mid: str, who: str, t: int, event: str, **extra: Any) -> dict[str, Any]:
        return {"type": "track", "messageId": mid, "userId": who, "anonymousId": f"anon-{who}",
                "timestamp": _ts(t), "event": event, **extra}

    def identify(mid: str, who: str, t: int) -> dict[str, Any]:
        return {"type": "identify", "messageId": mid, "userId": who,
                "anonymousId": f"anon-{who}", "timestamp": _ts(t),
                "traits": {"email": f"{who}@globex.com"}}

    msgs = [
        page("c1", "cy", 1, "https://example.com/?utm_source=google&utm_medium=cpc&utm_campaign=b"),
        identify("c2", "cy", 2),
        track("c3", "cy", 3, "Email Link Clicked",
              context={"campaign": {"source": "newsletter", "medium": "email"}}),
        track("c4", "cy", 4, "Demo Requested"),
        track("c5", "cy", 5, "Opportunity Created", properties={"amount": 50000}),
        track("c6", "cy", 6, "Deal Won", properties={"amount": "20000"}),
        page("d1", "di", 1, "https://example.com/", "https://www.google.com/"),
        identify("d2", "di", 2),
        track("d3", "di", 3, "Demo Requested"),
    ]
    p = tmp_path / "journeys.jsonl"
    p.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n")
    return p


def test_moves_pipeline_and_revenue_per_channel_and_model(tmp_path: Path) -> None:
    rep = backtest(_journeys(tmp_path), load_default_rules())
    ch = rep["result"]["by_channel"]
    assert list(ch) == ["first_touch", "last_touch", "linear", "u_shaped", "w_shaped"]
    zero = {"mql": 0, "sql": 0, "opportunity": 0, "customer": 0, "pipeline": 0, "revenue": 0}
    # first touch: all of Cy's to paid search; Di's MQL to organic search
    assert ch["first_touch"]["paid_search"] == {
        **zero, "mql": 1, "opportunity": 1, "customer": 1, "pipeline": 50000, "revenue": 20000}
    assert ch["first_touch"]["organic_search"] == {**zero, "mql": 1}
    assert ch["first_touch"]["email"] == zero
    # last touch: Cy's newsletter click was the last touch before each of its moves
    assert ch["last_touch"]["email"]["pipeline"] == 50000
    # linear over Cy's two touches: half each
    assert ch["linear"]["paid_search"] == ch["linear"]["email"] == {
        **zero, "mql": 0.5, "opportunity": 0.5, "customer": 0.5, "pipeline": 25000,
        "revenue": 10000}
    # W: the paid click is the first and the lead-creation touch (0.3 + 0.3), the newsletter
    # the last (0.3); no other touch, so the 0.1 goes a third to each of the three
    # positions: 0.6 + 0.2 / 3 of 50,000
    assert ch["w_shaped"]["paid_search"]["pipeline"] == pytest.approx(50000 * (0.6 + 0.2 / 3))
    # every model credits each move once: 3 MQLs in all
    assert {m: round(sum(r["mql"] for r in rows.values()), 6) for m, rows in ch.items()} == {
        m: 2 for m in ch}


def test_compare_shows_how_a_channel_change_moves_credit(tmp_path: Path) -> None:
    # without the paid search channel, the cpc click is classified by the next channel
    # that matches, or `other`
    other = parse_rules(default_rules_text().replace(
        "      - medium: [cpc, ppc, paid_search, paid-search, paidsearch, sem]",
        "      - medium: [sem]"))
    rep = backtest(_journeys(tmp_path), load_default_rules(), other=other)
    diff = rep["compare"]["diff"]["by_channel"]["first_touch"]
    assert diff["paid_search"]["pipeline"] == {"a": 50000, "b": 0, "delta": -50000}
    assert diff["other"]["pipeline"] == {"a": 0, "b": 50000, "delta": 50000}
    out = CliRunner().invoke(app, ["backtest", str(_journeys(tmp_path))])
    assert out.exit_code == 0, out.output
    assert "By channel and attribution model" in out.output and "paid_search" in out.output


def test_cac_per_channel_from_a_cost_file(tmp_path: Path) -> None:
    costs = tmp_path / "costs.yaml"
    costs.write_text("paid_search: 9000\norganic_search: 0\nemail: 1500\n")
    out = CliRunner().invoke(app, ["backtest", str(_journeys(tmp_path)), "--costs", str(costs),
                                   "--json"])
    assert out.exit_code == 0, out.output
    cac = orjson.loads(out.output)["result"]["cac"]
    # Cy's deal: all to paid search under first touch, half each under linear
    assert cac["first_touch"]["paid_search"] == {"cost": 9000, "customers": 1, "cac": 9000}
    assert cac["first_touch"]["email"] == {"cost": 1500, "customers": 0, "cac": None}
    assert cac["linear"]["email"] == {"cost": 1500, "customers": 0.5, "cac": 3000}
    assert cac["linear"]["organic_search"]["cac"] is None  # no customer credited
    tables = CliRunner().invoke(app, ["backtest", str(_journeys(tmp_path)), "--costs",
                                      str(costs)])
    assert tables.exit_code == 0 and "Customer acquisition cost" in tables.output


def test_cost_file_errors_name_the_channel(tmp_path: Path) -> None:
    costs = tmp_path / "costs.yaml"
    costs.write_text("paid_serch: 9000\nemail: lots\nsocial: -5\n")
    out = CliRunner().invoke(app, ["backtest", str(_journeys(tmp_path)), "--costs", str(costs)])
    assert out.exit_code != 0
    text = " ".join(out.output.split())
    assert "paid_serch: not a channel of the rules" in text
    assert "email: the cost must be a number >= 0, not 'lots'" in text
    assert "social: the cost must be a number >= 0, not -5" in text
