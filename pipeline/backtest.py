"""Backtest: run the pure core offline over a JSONL file of past Segment messages.

Revenue operations test a rules change before it goes live: how many leads end in each
stage, MQLs/SQLs/hot alerts per day, the score distribution, and with a second rules set
what changes. Lines that cannot be used are counted and reported with their line number
and reason; they never stop the run.

Identity is stitched the simple way: an anonymousId seen together with a userId anywhere
in the input belongs to that user, and so does an alias call's previousId (the stream's
stitching does both incrementally). A messageId seen twice for a lead counts once, as the
stream's dedup window does. The input is a JSONL file or the retained input topics
(`pipeline.backtest_log`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.attribution import CAMPAIGN_COST, UNATTRIBUTED, by_channel
from pipeline.core.engine import apply_batch, tick
from pipeline.core.event import Event
from pipeline.core.outputs import AlertTrigger, Attribution, Output, StageMove
from pipeline.core.routing import choose_team
from pipeline.core.rules import CompiledRules
from pipeline.core.stages import STAGES
from pipeline.core.state import LeadState
from pipeline.errors import ConfigError, InvalidEvent
from pipeline.models.events import parse_message

BUCKET = 10  # score distribution bucket width
BUCKET_TOP = 100  # everything at or above goes into one bucket
SAMPLE = 20  # how many differing leads a comparison lists


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line (or Kafka record) of the input that could not be used."""

    line: int
    reason: str
    detail: str
    where: str = ""  # topic[partition]@offset for a record read from Kafka


@dataclass(slots=True)
class Loaded:
    """Valid events (lead ids stitched) and the bad lines, from one JSONL file."""

    events: list[Event] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    lines: int = 0


@dataclass(slots=True)
class Run:
    """Final states and all outputs of one rules set over the events."""

    states: dict[str, LeadState]
    outputs: list[Output]


def load_events(path: Path, *, source: str = "") -> Loaded:
    """Parse a JSONL file of Segment messages; bad lines are collected, not raised."""
    out = Loaded()
    with path.open("rb") as fh:
        for no, raw in enumerate(fh, start=1):
            out.lines = no
            if not raw.strip():
                continue
            try:
                out.events.append(parse_message(raw.rstrip(b"\r\n"), source=source))
            except InvalidEvent as exc:
                out.bad.append(BadLine(no, exc.reason, exc.detail))
            except Exception as exc:  # a backtest reports bad input, it never stops on it
                out.bad.append(BadLine(no, "internal", f"{type(exc).__name__}: {exc}"))
    out.events = stitch(out.events)
    return out


def stitch(events: list[Event]) -> list[Event]:
    """Give every event of an anonymousId later identified (by an identify, a call with both
    ids, or an alias naming it as previousId) the user's lead id; drop repeated messageIds
    and "Campaign Cost" events (no lead's activity: the workers count them, never score)."""
    users: dict[str, str] = {}
    for e in events:
        if e.type == "alias" and e.user_id and e.name:
            users.setdefault(e.name, e.user_id)  # an alias event's name is its previousId
        elif e.user_id and e.anonymous_id:
            users.setdefault(e.anonymous_id, e.user_id)
    res = []
    seen: set[tuple[str, str]] = set()
    for e in events:
        if e.type == "track" and e.name == CAMPAIGN_COST:
            continue
        lead = e.user_id or (users.get(e.anonymous_id) if e.anonymous_id else None)
        if lead is not None and lead != e.lead_id:
            e = dataclasses.replace(e, lead_id=lead)
        if (e.lead_id, e.message_id) in seen:
            continue
        seen.add((e.lead_id, e.message_id))
        res.append(e)
    return res


def run(events: Iterable[Event], rules: CompiledRules, *,
        advance: Callable[[int], None] | None = None) -> Run:
    """Group per lead, score each lead's events in time order, then tick to the file's end."""
    by_lead: dict[str, list[tuple[int, int, Event]]] = {}
    end = 0
    for i, e in enumerate(events):
        by_lead.setdefault(e.lead_id, []).append((e.timestamp_ms, i, e))
        end = max(end, e.timestamp_ms)
    states: dict[str, LeadState] = {}
    outputs: list[Output] = []
    for lead, items in by_lead.items():
        items.sort(key=lambda x: (x[0], x[1]))
        res = apply_batch(None, [e for _, _, e in items], rules)
        outputs.extend(res.outputs)
        # as of the end of the file: the stream's timer would have recycled quiet leads
        final = tick(res.state, end, rules)
        outputs.extend(final.outputs)
        states[lead] = final.state
        if advance is not None:
            advance(len(items))
    return Run(states, outputs)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def _bucket(total: float) -> str:
    if total < 0:
        return "<0"
    if total >= BUCKET_TOP:
        return f"{BUCKET_TOP}+"
    lo = int(total // BUCKET) * BUCKET
    return f"{lo}-{lo + BUCKET}"


def bucket_names() -> list[str]:
    """Score buckets in display order."""
    return ["<0", *[f"{x}-{x + BUCKET}" for x in range(0, BUCKET_TOP, BUCKET)], f"{BUCKET_TOP}+"]


def team_capacity(r: Run, rules: CompiledRules) -> dict[str, dict[str, Any]]:
    """Per team: the leads a day its available reps can take (the sum of their `daily_cap`;
    null when one has none), the busiest day's alerts and the days above the cap: whether
    the MQL and hot lines fit what sales can work."""
    per_day = alerts_per_team_day(r, rules)
    out: dict[str, dict[str, Any]] = {}
    for team in rules.routing.teams:
        reps = [rep for rep in team.reps if rep.available]
        caps = [rep.daily_cap for rep in reps]
        cap = sum(c for c in caps if c is not None) if caps and None not in caps else None
        counts = [c.get(team.name, 0) for c in per_day.values()]
        out[team.name] = {
            "daily_cap": cap, "busiest_day": max(counts, default=0),
            "days_over_cap": sum(1 for n in counts if cap is not None and n > cap),
            "days": len(per_day)}
    return out


#: What the per-channel report counts, in display order: credited moves, then money.
CHANNEL_MEASURES = ("mql", "sql", "opportunity", "customer", "pipeline", "revenue")


def channels_report(r: Run, rules: CompiledRules) -> dict[str, dict[str, dict[str, float]]]:
    """Model -> channel -> MQLs, SQLs, opportunities and customers credited to the channel,
    and the pipeline ("Opportunity Created" amounts) and revenue ("Deal Won" amounts)
    credited to it, summed as the worker's metrics sum them. Amounts add up whatever their
    currency: a report per currency needs one backtest per currency."""
    names = [*rules.channel_names(), UNATTRIBUTED]
    out = {m: {ch: dict.fromkeys(CHANNEL_MEASURES, 0.0) for ch in names}
           for m in rules.attribution_models}
    for o in r.outputs:
        if not isinstance(o, Attribution):
            continue
        money = {"opportunity": "pipeline", "customer": "revenue"}.get(o.stage)
        for model, ws in o.credits:
            rows = out.get(model)
            if rows is None:
                continue
            for ch, w in by_channel(o.touches, ws).items():
                row = rows.setdefault(ch, dict.fromkeys(CHANNEL_MEASURES, 0.0))
                row[o.stage] += w
                if money is not None and o.amount:
                    row[money] += w * o.amount
    return {m: {ch: {k: round(v, 4) for k, v in row.items()} for ch, row in rows.items()}
            for m, rows in out.items()}


def load_costs(path: Path, rules: CompiledRules) -> dict[str, float]:
    """A cost file: YAML mapping each channel of the rules to what it cost over the period
    of the events (`paid_search: 12000`). Unknown channels and values that are not
    non-negative numbers are errors naming the file and the channel."""
    import math

    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the cost file: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a cost file maps channels to costs, e.g. paid_search: 12000")
    known = rules.channel_names()
    problems = []
    costs: dict[str, float] = {}
    for ch, v in doc.items():
        if ch not in known:
            problems.append(f"{path}: {ch}: not a channel of the rules ({', '.join(known)})")
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v < 0:
            problems.append(f"{path}: {ch}: the cost must be a number >= 0, not {v!r}")
        else:
            costs[str(ch)] = float(v)
    if problems:
        raise ConfigError("\n".join(problems))
    return costs


def cac_report(by_ch: Mapping[str, Mapping[str, Mapping[str, float]]],
               costs: Mapping[str, float]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Model -> channel -> cost, customers credited and CAC (cost per customer; null when
    no customer is credited to the channel), for the channels with a cost."""
    return {m: {ch: {"cost": cost, "customers": rows.get(ch, {}).get("customer", 0.0),
                     "cac": round(cost / n, 2) if (n := rows.get(ch, {}).get("customer", 0.0))
                     else None}
                for ch, cost in costs.items()}
            for m, rows in by_ch.items()}


def summarize(r: Run, rules: CompiledRules) -> dict[str, Any]:
    """Stages, per-day MQL/SQL/PQL/alert counts, the score distribution and the teams'
    capacity against their alerts, of one run."""
    stages = Counter(s.stage for s in r.states.values())
    days: dict[str, Counter[str]] = {}
    for o in r.outputs:
        if isinstance(o, StageMove) and o.to_stage in ("mql", "sql", "pql"):
            days.setdefault(_day(o.at_ms), Counter())[o.to_stage] += 1
        elif isinstance(o, AlertTrigger):
            days.setdefault(_day(o.at_ms), Counter())[f"alerts_{o.kind}"] += 1
    buckets = Counter(_bucket(rules.total(s.fit, s.engagement, s.product))
                      for s in r.states.values())
    alerts = Counter(o.kind for o in r.outputs if isinstance(o, AlertTrigger))
    return {
        "leads": len(r.states),
        "stages": {st: stages.get(st, 0) for st in STAGES},
        "per_day": {d: {"mql": c["mql"], "sql": c["sql"], "pql": c["pql"],
                        "hot_alerts": c["alerts_hot_score"] + c["alerts_instant"],
                        "pql_alerts": c["alerts_pql"]}
                    for d, c in sorted(days.items())},
        "alerts": {"instant": alerts["instant"], "hot_score": alerts["hot_score"],
                   "pql": alerts["pql"], "total": sum(alerts.values())},
        "score_buckets": {b: buckets.get(b, 0) for b in bucket_names()},
        "team_capacity": team_capacity(r, rules),
        "by_channel": channels_report(r, rules),
    }


def _alerts_per_lead(r: Run) -> Counter[str]:
    return Counter(o.lead_id for o in r.outputs if isinstance(o, AlertTrigger))


#: Score-change buckets of a comparison (B's total minus A's), in display order.
DELTA_EDGES = (-20, -10, -5, 0, 5, 10, 20)


def _delta_bucket(d: float) -> str:
    if d == 0:
        return "0"
    if d < DELTA_EDGES[0]:
        return f"< {DELTA_EDGES[0]:+d}"
    for lo, hi in itertools.pairwise(DELTA_EDGES):
        if lo <= d < hi:
            return f"{lo:+d} to {hi:+d}"
    return f">= {DELTA_EDGES[-1]:+d}"


def delta_bucket_names() -> list[str]:
    """Score-change buckets in display order ("0": unchanged)."""
    inner = [f"{lo:+d} to {hi:+d}" for lo, hi in itertools.pairwise(DELTA_EDGES)]
    zero = DELTA_EDGES.index(0)
    return [f"< {DELTA_EDGES[0]:+d}", *inner[:zero], "0", *inner[zero:],
            f">= {DELTA_EDGES[-1]:+d}"]


def alerts_per_team_day(r: Run, rules: CompiledRules) -> dict[str, dict[str, int]]:
    """Team alerts (instant, hot_score, pql) per day and team, the team chosen from the
    lead's final traits as the stream's routing would: what each team would have to work."""
    out: dict[str, Counter[str]] = {}
    teams: dict[str, str] = {}
    for o in r.outputs:
        if not isinstance(o, AlertTrigger):
            continue
        team = teams.get(o.lead_id)
        if team is None:
            state = r.states.get(o.lead_id)
            traits = {k: v[0] for k, v in state.traits.items()} if state else {}
            team = teams[o.lead_id] = choose_team(rules.routing, traits)[0].name
        out.setdefault(_day(o.at_ms), Counter())[team] += 1
    return {d: dict(sorted(c.items())) for d, c in sorted(out.items())}


def compare(a: Run, b: Run, sa: Mapping[str, Any], sb: Mapping[str, Any],
            ra: CompiledRules | None = None, rb: CompiledRules | None = None
            ) -> dict[str, Any]:
    """What changes from rules set A to B: stage counts, leads whose stage differs, score
    changes (distribution and the biggest movers), alerts, alerts per team per day."""
    differ = sorted(lead for lead in a.states
                    if lead in b.states and a.states[lead].stage != b.states[lead].stage)
    aa, ab = _alerts_per_lead(a), _alerts_per_lead(b)
    alert_diff = sorted(lead for lead in set(aa) | set(ab) if aa[lead] != ab[lead])
    movers: list[dict[str, Any]] = []
    deltas: Counter[str] = Counter()
    if ra is not None and rb is not None:
        for lead in sorted(set(a.states) & set(b.states)):
            sa_, sb_ = a.states[lead], b.states[lead]
            ta = ra.total(sa_.fit, sa_.engagement, sa_.product)
            tb = rb.total(sb_.fit, sb_.engagement, sb_.product)
            deltas[_delta_bucket(tb - ta)] += 1
            if tb != ta:
                movers.append({"lead_id": lead, "a": round(ta, 2), "b": round(tb, 2),
                               "delta": round(tb - ta, 2), "stage_a": sa_.stage,
                               "stage_b": sb_.stage})
        movers.sort(key=lambda m: (-abs(m["delta"]), m["lead_id"]))
    out: dict[str, Any] = {
        "stages": {st: {"a": sa["stages"][st], "b": sb["stages"][st],
                        "delta": sb["stages"][st] - sa["stages"][st]} for st in STAGES},
        "leads_changed": len(differ),
        "changed_sample": [{"lead_id": lead, "a": a.states[lead].stage,
                            "b": b.states[lead].stage} for lead in differ[:SAMPLE]],
        "alerts": {"a": sa["alerts"]["total"], "b": sb["alerts"]["total"],
                   "delta": sb["alerts"]["total"] - sa["alerts"]["total"],
                   "leads_with_different_alerts": len(alert_diff)},
    }
    ca, cb = sa.get("by_channel", {}), sb.get("by_channel", {})
    out["by_channel"] = {
        m: {ch: {k: {"a": ca[m].get(ch, {}).get(k, 0.0), "b": cb[m].get(ch, {}).get(k, 0.0),
                     "delta": round(cb[m].get(ch, {}).get(k, 0.0)
                                    - ca[m].get(ch, {}).get(k, 0.0), 4)}
                 for k in CHANNEL_MEASURES}
            for ch in sorted(set(ca[m]) | set(cb[m]))}
        for m in ca if m in cb}
    if ra is not None and rb is not None:
        out["score_deltas"] = {name: deltas.get(name, 0) for name in delta_bucket_names()}
        out["movers"] = movers[:SAMPLE]
        out["alerts_per_team_per_day"] = {"a": alerts_per_team_day(a, ra),
                                          "b": alerts_per_team_day(b, rb)}
    return out


def backtest(path: Path | None, rules: CompiledRules, *, other: CompiledRules | None = None,
             progress: bool = False, loaded: Loaded | None = None,
             source: str | None = None, costs: Mapping[str, float] | None = None
             ) -> dict[str, Any]:
    """Load (a JSONL file, or `loaded` events read elsewhere and named by `source`), run one
    or two rules sets, and build the JSON-friendly report (with CAC per channel when the
    channels' `costs` are given)."""
    if loaded is None:
        assert path is not None, "a path or loaded events"
        loaded = load_events(path)
    n = len(loaded.events)
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("scoring", total=n * (2 if other else 1))
            ra = run(loaded.events, rules, advance=lambda k: bar.advance(task, k))
            rb = run(loaded.events, other, advance=lambda k: bar.advance(task, k)) \
                if other else None
    else:
        ra = run(loaded.events, rules)
        rb = run(loaded.events, other) if other else None
    report: dict[str, Any] = {
        "input": {"path": source or str(path), "lines": loaded.lines, "events": n,
                  "invalid": len(loaded.bad),
                  "invalid_lines": [dataclasses.asdict(b) for b in loaded.bad]},
        "result": summarize(ra, rules),
    }
    if costs:
        report["result"]["cac"] = cac_report(report["result"]["by_channel"], costs)
    if rb is not None and other is not None:
        sb = summarize(rb, other)
        report["compare"] = {"result": sb,
                             "diff": compare(ra, rb, report["result"], sb, rules, other)}
    return report


def _num(v: float) -> str:
    return f"{round(v, 2):,g}"  # the JSON report keeps 4 decimals


def render(report: Mapping[str, Any]) -> None:
    """Print the report as tables for people."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    inp = report["input"]
    con.print(f"[bold]{inp['path']}[/]: {inp['lines']} lines, {inp['events']} events, "
              f"{inp['invalid']} invalid")
    for b in inp["invalid_lines"][:SAMPLE]:
        con.print(f"  {b.get('where') or 'line ' + str(b['line'])}: {b['reason']}: "
                  f"{b['detail']}", style="yellow", markup=False)
    res = report["result"]
    other = report.get("compare")
    con.print(f"[bold]{res['leads']} leads[/]")
    t = Table(title="Leads per stage")
    t.add_column("stage")
    t.add_column("leads", justify="right")
    if other:
        t.add_column("compare", justify="right")
        t.add_column("delta", justify="right")
    for st, n in res["stages"].items():
        if other:
            d = other["diff"]["stages"][st]
            t.add_row(st, str(n), str(d["b"]), f"{d['delta']:+d}")
        else:
            t.add_row(st, str(n))
    con.print(t)
    days = Table(title="Per day")
    for col in ("day", "mql", "sql", "pql", "hot alerts", "pql alerts"):
        days.add_column(col, justify="right" if col != "day" else "left")
    for d, c in res["per_day"].items():
        days.add_row(d, str(c["mql"]), str(c["sql"]), str(c["pql"]), str(c["hot_alerts"]),
                     str(c["pql_alerts"]))
    con.print(days)
    dist = Table(title="Score distribution")
    dist.add_column("score")
    dist.add_column("leads", justify="right")
    if other:
        dist.add_column("compare", justify="right")
    for b, n in res["score_buckets"].items():
        row = [b, str(n)] + ([str(other["result"]["score_buckets"][b])] if other else [])
        dist.add_row(*row)
    con.print(dist)
    cap = Table(title="Team alerts against the reps' daily caps")
    for col in ("team", "daily cap", "busiest day", "days over cap"):
        cap.add_column(col, justify="left" if col == "team" else "right")
    for team, c in res["team_capacity"].items():
        over = f"{c['days_over_cap']} of {c['days']}" if c["daily_cap"] is not None else "-"
        cap.add_row(team, str(c["daily_cap"]) if c["daily_cap"] is not None else "no cap",
                    str(c["busiest_day"]), over)
    con.print(cap)
    chans = Table(title="By channel and attribution model (credited; rules -> compare)"
                  if other else "By channel and attribution model (credited)")
    for col in ("model", "channel", *CHANNEL_MEASURES):
        text = col in ("model", "channel")  # names whole; a narrow terminal folds numbers
        chans.add_column(col, justify="left" if text else "right", no_wrap=text,
                         overflow="fold")
    diff_ch = other["diff"]["by_channel"] if other else {}
    for model, rows in res["by_channel"].items():
        for ch, row in rows.items():
            cells = ({k: (v["a"], v["b"]) for k, v in diff_ch[model][ch].items()}
                     if model in diff_ch and ch in diff_ch[model]
                     else {k: (v, v) for k, v in row.items()})
            if not any(a or b for a, b in cells.values()):
                continue  # a channel nothing was credited to, either way
            chans.add_row(model, ch, *(_num(a) if a == b or not other else
                                       f"{_num(a)} -> {_num(b)}"
                                       for a, b in (cells[k] for k in CHANNEL_MEASURES)))
    con.print(chans)
    if "cac" in res:
        cac = Table(title="Customer acquisition cost by channel (cost / customers credited)")
        for col in ("model", "channel", "cost", "customers", "cac"):
            cac.add_column(col, justify="left" if col in ("model", "channel") else "right",
                           no_wrap=col in ("model", "channel"))
        for model, rows in res["cac"].items():
            for ch, c in rows.items():
                cac.add_row(model, ch, _num(c["cost"]), _num(c["customers"]),
                            "-" if c["cac"] is None else _num(c["cac"]))
        con.print(cac)
    if other:
        diff = other["diff"]
        a = diff["alerts"]
        con.print(f"Leads whose stage differs: {diff['leads_changed']}; alerts {a['a']} -> "
                  f"{a['b']} ({a['delta']:+d}), leads with different alerts: "
                  f"{a['leads_with_different_alerts']}")
        for row in diff["changed_sample"]:
            con.print(f"  {row['lead_id']}: {row['a']} -> {row['b']}", markup=False)
        if "score_deltas" in diff:
            moved = Table(title="Score change per lead (compare minus rules)")
            moved.add_column("change")
            moved.add_column("leads", justify="right")
            for name, n in diff["score_deltas"].items():
                moved.add_row(name, str(n))
            con.print(moved)
            top = Table(title="Biggest movers")
            for col in ("lead", "score", "compare", "delta", "stage", "compare stage"):
                top.add_column(col, justify="left" if "stage" in col or col == "lead"
                               else "right")
            for m in diff["movers"]:
                top.add_row(m["lead_id"], f"{m['a']:g}", f"{m['b']:g}", f"{m['delta']:+g}",
                            m["stage_a"], m["stage_b"])
            con.print(top)
            per_team = Table(title="Team alerts per day (rules -> compare)")
            per_team.add_column("day")
            per_team.add_column("team")
            per_team.add_column("alerts", justify="right")
            apd = diff["alerts_per_team_per_day"]
            for day in sorted(set(apd["a"]) | set(apd["b"])):
                for team in sorted(set(apd["a"].get(day, {})) | set(apd["b"].get(day, {}))):
                    per_team.add_row(day, team, f"{apd['a'].get(day, {}).get(team, 0)} -> "
                                     f"{apd['b'].get(day, {}).get(team, 0)}")
            con.print(per_team)
