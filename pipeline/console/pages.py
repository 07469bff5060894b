"""The console's HTML: plain server-rendered pages, inline CSS and SVG, no scripts.

Every value from a lead, an alert or a search is escaped here; the pages' `data-*`
attributes carry the raw figures (the browser tests read them).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from pipeline.console.funnel import Funnel
from pipeline.console.sources import (
    AckSent,
    EscalationSeen,
    QueueItem,
    ScoreChangeSeen,
    SearchResult,
    StageMove,
    TeamQueue,
)
from pipeline.stream.leadview import company_name

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;
align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:1em 1.2em;max-width:70em}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;background:#fff}
td,th{padding:.3em .7em;border-bottom:1px solid #e3e6eb;text-align:left}
.score{font-size:2em;font-weight:600}.muted{color:#6b7280}.bad{color:#b91c1c}.ok{color:#047857}
.tag{display:inline-block;padding:0 .5em;border-radius:.6em;background:#e0e7ff}
.flash{background:#ecfdf5;border:1px solid #6ee7b7;padding:.5em 1em}
.error{background:#fef2f2;border:1px solid #fca5a5;padding:.5em 1em}
button{cursor:pointer}
"""


def url(*parts: str) -> str:
    """A console path with each part quoted (lead ids and teams are user data)."""
    return "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


def layout(title: str, body: str, *, q: str = "") -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width'>"
            f"<title>{escape(title)} · leadflow</title><style>{CSS}</style></head><body>"
            f"<header><a href='/'><b>leadflow</b></a><a href='/teams'>Team queues</a>"
            f"<a href='/funnel'>Funnel</a>"
            f"<form action='/search' method=get role=search><input name=q type=search "
            f"placeholder='lead id, e-mail or company' value='{escape(q, quote=True)}' size=30>"
            f" <button>Search</button></form></header><main>{body}</main></body></html>")


def error_page(status: int, title: str, detail: str) -> str:
    return layout(title, f"<h1>{escape(title)}</h1><p class=error data-status={status}>"
                         f"{escape(detail)}</p><p><a href='/'>Start page</a></p>")


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def countdown(due_ms: int | None, now_ms: int) -> str:
    """'4m 12s left' or 'overdue by 1m 3s'."""
    if due_ms is None:
        return "no SLA"
    left = (due_ms - now_ms) // 1000
    span = abs(left)
    text = (f"{span // 3600}h {span % 3600 // 60}m" if span >= 3600
            else f"{span // 60}m {span % 60}s")
    return f"{text} left" if left >= 0 else f"overdue by {text}"


def _rows(head: Sequence[str], rows: Iterable[Sequence[str]], empty: str, attrs: str = "") -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        return f"<p class=muted {attrs}>{escape(empty)}</p>"
    heads = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table {attrs}><tr>{heads}</tr>{body}</table>"


def index_page(teams: Sequence[str]) -> str:
    links = "".join(f"<li><a href='{url('teams', t)}'>{escape(t)}</a></li>" for t in teams)
    return layout("Console", "<h1>leadflow console</h1><p>Search a lead by id, e-mail or "
                  "company above; or open a team queue:</p>"
                  f"<ul>{links}</ul><p><a href='/funnel'>Funnel KPIs</a></p>")


def teams_page(teams: Sequence[str]) -> str:
    links = "".join(f"<li><a href='{url('teams', t)}'>{escape(t)}</a></li>" for t in teams)
    return layout("Team queues", f"<h1>Team queues</h1><ul>{links}</ul>")


def search_page(q: str, result: SearchResult) -> str:
    matches = result.matches
    missing = "".join(
        f"<p class=error id=unanswered>The worker at {escape(u)} did not answer: leads of its "
        "partitions may be missing here.</p>" for u in result.unanswered)
    rows = ([f"<a href='{url('leads', m['lead_id'])}'>{escape(m['lead_id'])}</a>",
             escape(str(m.get("email") or "")), escape(str(m.get("company") or "")),
             escape(str(m["stage"])), f"{float(m['score']):g}"] for m in matches)
    return layout(f"Search {q}", f"<h1>Leads matching “{escape(q)}”</h1>{missing}" + _rows(
        ["lead", "e-mail", "company", "stage", "score"], rows,
        f"No lead's id, e-mail or company contains “{q}”.", "id=results"), q=q)


def lead_page(doc: Mapping[str, Any], history: Sequence[StageMove], alert_state: str,
              alert_open: QueueItem | None, now_ms: int,
              changes: Sequence[ScoreChangeSeen] = ()) -> str:
    lead_id = str(doc["lead_id"])
    scores = doc.get("scores") or {}
    total = float(scores.get("total", 0))
    groups = ", ".join(f"{escape(k)} {float(v):g}" for k, v in scores.items() if k != "total")
    bd = doc.get("breakdown") or {}
    top = _rows(["rule", "group", "points", "times"], (
        [escape(str(r["rule"])), escape(str(r.get("group", ""))), f"{float(r['points']):g}",
         str(r.get("count", ""))] for r in bd.get("top_rules") or []),
        "No rule has scored yet.", "id=breakdown")
    fit = _rows(["fit rule", "points"], ([escape(str(f["rule"])), f"{float(f['points']):g}"]
                                         for f in bd.get("fit") or []), "No fit rule matched.")
    moves = _rows(["when", "from", "to", "status", "why"], (
        [when(m.at_ms), escape(m.from_stage), escape(m.to_stage), escape(m.status),
         escape(m.reason or m.rule or m.event_name or "")] for m in history),
        "No stage change seen since the console started reading leads.stage-changes.",
        "id=history")
    score_rows = _rows(["when", "change", "rule", "group", "points", "total after"], (
        [when(c.at_ms), escape(c.kind), escape(c.rule), escape(c.group), f"{c.delta:+g}",
         f"{c.total:g}"] for c in changes),
        "No score change kept (the worker's LEADFLOW_SCORE_LEDGER may be off).",
        "id=score-changes")
    traits = doc.get("traits") or {}
    trait_rows = _rows(["trait", "value"], ([escape(str(k)), escape(_trait(k, v))]
                                            for k, v in traits.items()), "No traits.")
    events = _rows(["when", "rule", "points"], (
        [when(e.get("at_ms")), escape(str(e["rule"])), f"{float(e['points']):g}"]
        for e in doc.get("last_events") or []), "No scoring events.")
    alert = "<p class=muted>No alert.</p>"
    if doc.get("last_alert_id"):
        due = (f", {escape(countdown(alert_open.due_ms, now_ms))}"
               if alert_open is not None and alert_open.due_ms is not None else "")
        alert = (f"<p id=alert>Latest alert <code>{escape(str(doc['last_alert_id']))}</code>: "
                 f"<span class=tag data-sla-state='{escape(alert_state, quote=True)}'>"
                 f"{escape(alert_state)}</span>{due}</p>")
    owner = escape(str(doc.get("owner") or "nobody"))
    team = doc.get("team")
    team_link = f"<a href='{url('teams', str(team))}'>{escape(str(team))}</a>" if team else "none"
    hot = ' <span class="tag bad">hot</span>' if doc.get("hot") else ""
    version = escape(str(doc.get("rules_version")))
    body = (f"<h1>Lead {escape(lead_id)}</h1>"
            f"<p>Stage <span class=tag id=stage>{escape(str(doc.get('stage')))}</span>"
            f"{hot} · "
            f"owner <b id=owner>{owner}</b>, team {team_link}</p>"
            f"<p><span class=score id=score data-score='{total:g}'>{total:g}</span> points "
            f"<span class=muted>({groups}; rules {version})</span></p>"
            f"<h2>Alert</h2>{alert}<h2>Why this score</h2>{top}<h2>Fit</h2>{fit}"
            f"<h2>Stage history</h2>{moves}<h2>Score changes</h2>{score_rows}"
            f"<h2>Latest scoring events</h2>{events}"
            f"<h2>Traits</h2>{trait_rows}")
    return layout(f"Lead {lead_id}", body)


def _trait(name: str, v: Any) -> str:
    if name == "company" and (company := company_name(v)):
        return company
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def queue_page(queue: TeamQueue, escalations: Sequence[EscalationSeen],
               acked: Mapping[str, AckSent], now_ms: int, flash: str = "") -> str:
    team = queue.team

    def ack_cell(i: QueueItem) -> str:
        if i.alert_id in acked:
            return "<span class=ok>acknowledged, the worker closes it shortly</span>"
        return (f"<form method=post action='{url('teams', team, 'alerts', i.alert_id, 'ack')}'>"
                f"<button data-alert='{escape(i.alert_id, quote=True)}'>Acknowledge</button>"
                "</form>")

    def lead(i: QueueItem) -> str:
        return f"<a href='{url('leads', i.lead_id)}'>{escape(i.lead_id)}</a>"

    owned = sorted(queue.section("owned"), key=lambda i: i.due_ms or 0)
    owned_t = _rows(["alert", "lead", "kind", "owner", "SLA", ""], (
        [f"<code>{escape(i.alert_id)}</code>", lead(i), escape(i.kind),
         escape(i.owner or ""),
         f"<span data-due-ms={i.due_ms} class='{'bad' if (i.due_ms or 0) < now_ms else ''}'>"
         f"{escape(countdown(i.due_ms, now_ms))}</span>", ack_cell(i)] for i in owned),
        "No open alert with an owner.", "id=owned")
    unowned_t = _rows(["alert", "lead", "kind", "since", "why unowned", ""], (
        [f"<code>{escape(i.alert_id)}</code>", lead(i), escape(i.kind), escape(i.since or ""),
         escape(i.reason or ""), ack_cell(i)]
        for i in [*queue.section("unowned"), *queue.section("waiting")]),
        "No unowned alert.", "id=unowned")
    esc_t = _rows(["alert", "lead", "from", "to", "breached", "why"], (
        [f"<code>{escape(e.alert_id)}</code>", f"<a href='{url('leads', e.lead_id)}'>"
         f"{escape(e.lead_id)}</a>", escape(e.from_owner or "-"), escape(e.to_owner or "-"),
         escape(e.breached_at), escape(e.reason)] for e in escalations[:50]),
        "No escalation seen.", "id=escalations")
    note = f"<p class=flash role=status>{escape(flash)}</p>" if flash else ""
    dropped = (f"<p class=muted>{queue.unowned_dropped} older unowned alerts are no longer "
               "kept.</p>" if queue.unowned_dropped else "")
    body = (f"<h1>Team {escape(team)}</h1>{note}<p class=muted>SLA times as of "
            f"{when(now_ms)}; <a href='{url('teams', team)}'>refresh</a>.</p>"
            f"<h2>Open alerts</h2>{owned_t}<h2>Unowned</h2>{unowned_t}{dropped}"
            f"<h2>Escalations</h2>{esc_t}")
    return layout(f"Team {team}", body)


def bar_chart(chart_id: str, bars: Sequence[tuple[str, float | None, str]],
              top: float) -> str:
    """A horizontal bar chart as inline SVG: (label, value or None, text shown) per bar."""
    row, width, left = 30, 520, 170
    height = row * len(bars) + 10
    parts = [f"<svg id='{chart_id}' role=img width={left + width + 90} height={height} "
             f"xmlns='http://www.w3.org/2000/svg' font-size=13>"]
    for n, (label, value, text) in enumerate(bars):
        y = 5 + n * row
        w = 0 if value is None or top <= 0 else max(1.0, width * min(value, top) / top)
        raw = "" if value is None else f"{value:.6g}"
        parts.append(
            f"<g data-label='{escape(label, quote=True)}' data-value='{raw}'>"
            f"<text x=0 y={y + 17}>{escape(label)}</text>"
            f"<rect x={left} y={y} width={w:.1f} height={row - 8} fill='#4f46e5'/>"
            f"<text x={left + w + 6:.1f} y={y + 17}>{escape(text)}</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def _pct(v: float | None) -> str:
    return "no data" if v is None else f"{v * 100:.1f}%"


def _secs(v: float | None) -> str:
    if v is None:
        return "no touch yet"
    return f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def funnel_page(f: Funnel) -> str:
    conv = bar_chart("conversion", [
        (r.label, r.value, _pct(r.value) + (f" ({r.numerator:g}/{r.denominator:g})"
                                            if r.numerator is not None else ""))
        for r in f.ratios], 1.0)
    teams = f.teams
    breach = bar_chart("sla-breaches", [
        (t.team, t.breach_ratio, _pct(t.breach_ratio) + (
            f" ({t.breaches:g} of {t.alerts:g} alerts)" if t.breaches is not None
            else f" of {t.alerts:.0f} alerts"))
        for t in teams], 1.0) if teams else "<p class=muted>No alert yet.</p>"
    speeds = [t for t in teams if t.p50_s is not None]
    top = max((t.p90_s or 0.0 for t in speeds), default=0.0)
    speed = bar_chart("speed-to-lead", [
        (f"{t.team} {q}", v, _secs(v)) for t in speeds
        for q, v in (("p50", t.p50_s), ("p90", t.p90_s))], top) if speeds else \
        "<p class=muted>No first sales touch measured yet.</p>"
    by_team = [(t.team, r) for t in teams for r in t.conversion]
    team_conv = bar_chart("conversion-by-team", [
        (f"{team} {r.label}", r.value, _pct(r.value) + (
            f" ({r.numerator:g}/{r.denominator:g})" if r.numerator is not None else ""))
        for team, r in by_team], 1.0) if by_team else \
        "<p class=muted>No stage move of a team's lead yet.</p>"
    body = (f"<h1>Funnel</h1><p class=muted id=source>The KPIs of "
            f"deploy/prometheus/recording_rules.yml, {escape(f.source)}.</p>"
            f"<h2>Conversion</h2>{conv}"
            f"<h2>Conversion by team</h2><p class=muted>Of the moves out of a stage while "
            f"the team owned the lead, the share to the next stage.</p>{team_conv}"
            f"<h2>SLA breaches by team</h2>{breach}"
            f"<h2>Speed to lead</h2>{speed}")
    return layout("Funnel", body)
