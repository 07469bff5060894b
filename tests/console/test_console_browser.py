"""The console in a real headless Chromium against the real pipeline (broker, worker).

Two hot leads of one team, sent a few seconds apart: the page of the first shows the
score the pure core computes for its events; acknowledging its alert in the team queue
page stops its SLA timer: the alert leaves the queue, and when the other lead's alert
(due later) escalates, the first one has not; the funnel page charts what the worker
counted. Screenshots go to $LEADFLOW_TEST_ARTIFACTS/console (tests/support/browser.py).

The worker's clock runs RATE times wall speed, so an SLA period lasts SLA_S / RATE = 60
wall seconds: the browser's acknowledgement has a wide margin, the escalation comes soon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.core.engine import apply
from pipeline.core.rules import load_rules
from pipeline.core.state import LeadState
from pipeline.kafka.topics import ensure_topics, topic_specs
from pipeline.models.events import parse_message
from tests.support.browser import CHROMIUM, FLAGS, artifacts_dir
from tests.support.console import ConsoleProcess
from tests.support.workers import REPO, Isolated, WorkerProcess, consume, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLA_S = 3600
RATE = 60
SLA_WALL_S = SLA_S / RATE
ACK_MARGIN_S = 20.0  # the ack must leave this long before the deadline, or the test says so
TOKEN = "console-test-token-0123456789"
ROUTING = f"""routing:
  sla: {{instant: {SLA_S}s, hot_score: {SLA_S}s, pql: {SLA_S}s}}
  teams:
    - name: sales
      reps:
        - {{id: rep-sam, capacity: 1}}
        - {{id: rep-ava, capacity: 1}}
"""
KNOWN, OTHER = "c-known", "c-other"
COMPANY = {KNOWN: "Knownco Industries", OTHER: "Otherco"}


def rules_file(tmp_path: Path) -> Path:
    text = (REPO / "pipeline" / "rules" / "default.yaml").read_text()
    head, sep, _ = text.partition("\nrouting:")
    assert sep, "default.yaml has no routing section to replace"
    path = tmp_path / "rules.yaml"
    path.write_text(head + "\n" + ROUTING)
    return path


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def hot_lead(lead: str, ts: float) -> list[dict[str, Any]]:
    ctx = {"library": {"name": "analytics.js", "version": "5.0"}}
    return [
        {"type": "identify", "messageId": f"{lead}-id", "userId": lead, "timestamp": _iso(ts),
         "context": ctx,
         "traits": {"email": f"buyer@{lead}.example", "country": "US", "employees": 250,
                    "title": "VP Sales", "company": {"name": COMPANY[lead]}}},
        {"type": "track", "messageId": f"{lead}-demo", "userId": lead, "event": "Demo Requested",
         "timestamp": _iso(ts + 0.5), "context": ctx, "properties": {"form": "demo"}},
    ]


def crm(lead: str, event: str, ts: float, **props: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": f"{lead}-{event}", "userId": lead, "event": event,
            "timestamp": _iso(ts), "properties": props}


def offline(bodies: list[dict[str, Any]], rules: Any) -> tuple[LeadState, list[tuple[str, str]]]:
    """The pure core over one lead's events: its state and the stage moves it made."""
    state: LeadState | None = None
    moves: list[tuple[str, str]] = []
    for body in bodies:
        res = apply(state, parse_message(orjson.dumps(body), source="web"), rules,
                    ledger=True)
        state = res.state
        moves += [(o.from_stage, o.to_stage) for o in res.outputs
                  if type(o).__name__ == "StageMove"]
    assert state is not None
    return state, moves


async def _queue(worker: WorkerProcess) -> dict[str, Any]:
    status, doc = await worker.get("/teams/sales/queue")
    assert status == 200, (status, doc)
    return dict(doc)


def _owned(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["lead_id"]: o for o in doc["owned"]}


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def test_lead_page_queue_acknowledge_and_funnel_in_chromium(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    assert Path(CHROMIUM).exists(), "chromium is not installed (apt-get install -y chromium)"
    import playwright.async_api as playwright_api

    shots = artifacts_dir("console")
    rules_path = rules_file(tmp_path)
    rules = load_rules(rules_path)
    iso = Isolated(kafka_bootstrap, tmp_path / "home", extra_env={
        "LEADFLOW_RULES_FILE": str(rules_path),
        "LEADFLOW_SLA_CHECK_INTERVAL_S": "0.5",
        "LEADFLOW_CLOCK_START": datetime.now(UTC).isoformat(),
        "LEADFLOW_CLOCK_RATE": str(RATE),
    })
    await ensure_topics(kafka_bootstrap, topic_specs(iso.settings, teams=["sales"]))
    t = iso.settings.topics
    worker = worker_factory(iso)
    await worker.wait_ready()
    console = ConsoleProcess(iso, worker, tmp_path / "console.log", token=TOKEN)
    await console.start()
    try:
        # the browser first: its start must not eat into the acknowledgement's margin
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=FLAGS)
            # the console asks for its token as a basic-auth password, as a person gives it
            context = await browser.new_context(
                http_credentials={"username": "ae", "password": TOKEN},
                viewport={"width": 1200, "height": 900})
            try:
                page = await context.new_page()
                sent: dict[str, list[dict[str, Any]]] = {}
                now = time.time()
                sent[KNOWN] = hot_lead(KNOWN, now - 5)
                for body in sent[KNOWN]:
                    await producer.send_and_wait(t.web, orjson.dumps(body), key=KNOWN.encode())
                produced_at = time.time()
                await poll(lambda: _queue(worker), lambda d: KNOWN in _owned(d), 60)
                # the other lead's alert is routed after the known one's: it is due later
                sent[OTHER] = hot_lead(OTHER, time.time() - 5)
                for body in sent[OTHER]:
                    await producer.send_and_wait(t.web, orjson.dumps(body), key=OTHER.encode())
                queue = await poll(lambda: _queue(worker), lambda d: OTHER in _owned(d), 60)
                known_alert, other_alert = _owned(queue)[KNOWN], _owned(queue)[OTHER]
                assert _ms(known_alert["due_at"]) <= _ms(other_alert["due_at"]), queue

                state, _ = offline(sent[KNOWN], rules)
                expected_score = round(rules.total(state.fit, state.engagement, state.product), 2)
                assert expected_score > 0

                # -- the lead page, found by company ---------------------------------------
                await page.goto(console.url("/"))
                await page.fill("input[name=q]", "knownco")
                async with page.expect_navigation():
                    await page.press("input[name=q]", "Enter")
                await page.screenshot(path=str(shots / "search.png"), full_page=True)
                async with page.expect_navigation():
                    await page.click(f"#results a[href='/leads/{KNOWN}']")
                assert float(await page.get_attribute("#score", "data-score") or "nan") == \
                    expected_score
                assert await page.text_content("#owner") == known_alert["owner"]
                assert await page.get_attribute("[data-sla-state]", "data-sla-state") == "open"
                bd_rules = {r for r, *_ in state.contributions.items()}
                breakdown = await page.text_content("#breakdown") or ""
                assert bd_rules and all(r in breakdown for r in bd_rules), breakdown
                # the score changes, from the worker's /history: the core's, newest first
                assert state.changes
                assert await page.locator("#score-changes tr td:nth-child(3)").all_text_contents() \
                    == [c.rule for c in reversed(state.changes)]
                await page.screenshot(path=str(shots / "lead.png"), full_page=True)

                # -- the team queue: acknowledge the known lead's alert ---------------------
                await page.goto(console.url("/teams/sales"))
                button = f"button[data-alert='{known_alert['alert_id']}']"
                assert await page.is_visible(f"button[data-alert='{other_alert['alert_id']}']")
                row = f"#owned tr:has({button})"
                assert await page.get_attribute(f"{row} [data-due-ms]", "data-due-ms") == \
                    str(_ms(known_alert["due_at"]))
                # counted on the worker's (fast) clock: within one SLA period
                countdown = await page.text_content(f"{row} [data-due-ms]") or ""
                assert countdown.endswith(" left") and not countdown.startswith("1h"), countdown
                await page.screenshot(path=str(shots / "queue-before-ack.png"), full_page=True)
                async with page.expect_navigation():
                    await page.click(button)
                acked_at = time.time()
                assert f"Alert {known_alert['alert_id']} acknowledged." in \
                    (await page.text_content("[role=status]") or "")
                assert not await page.is_visible(button)
                await page.screenshot(path=str(shots / "queue-after-ack.png"), full_page=True)
                assert acked_at - produced_at < SLA_WALL_S - ACK_MARGIN_S, (
                    f"the acknowledgement left {acked_at - produced_at:.1f} s after the lead's "
                    "events: too late to prove anything")

                # the SLA timer stopped: the alert left the worker's queue...
                await poll(lambda: _queue(worker), lambda d: KNOWN not in _owned(d), 60)
                # a second acknowledgement, and one of an alert the team's topic never had
                again = await page.request.post(
                    console.url(f"/teams/sales/alerts/{known_alert['alert_id']}/ack"))
                assert again.status == 409 and "already acknowledged" in await again.text()
                unknown = await page.request.post(console.url("/teams/sales/alerts/nope/ack"))
                assert unknown.status == 404, await unknown.text()
                assert "no alert nope in team sales" in await unknown.text()
                # ...and when the other alert (due later) escalates, this one has not
                got = await consume(kafka_bootstrap, [t.escalations],
                                    until=lambda o: any(d["lead_id"] == OTHER for *_, d in o),
                                    timeout=SLA_WALL_S * 3)
                escalated = {d["alert_id"] for *_, d in got}
                assert other_alert["alert_id"] in escalated, (got, worker.tail())
                assert known_alert["alert_id"] not in escalated, got
                # counted once the escalation's send is acknowledged: it may lag the topic
                breaches = await poll(lambda: worker.metric("leadflow_sla_breaches_total"),
                                      lambda n: n >= 1, 30)
                assert breaches == 1

                # the queue page shows the escalation once the console has read it
                async def escalation_shown() -> str:
                    await page.goto(console.url("/teams/sales"))
                    return await page.text_content("#escalations") or ""

                await poll(escalation_shown, lambda text: other_alert["alert_id"] in text, 60)
                await page.screenshot(path=str(shots / "queue-escalated.png"), full_page=True)
                await page.goto(console.url(f"/leads/{KNOWN}"))
                assert await page.get_attribute("[data-sla-state]", "data-sla-state") == \
                    "acknowledged"

                # -- the funnel: sales' decisions, then the charts ---------------------------
                decisions = {KNOWN: crm(KNOWN, "Lead Accepted", time.time() - 1),
                             OTHER: crm(OTHER, "Lead Rejected", time.time() - 1,
                                        reason="no budget")}
                for lead, body in decisions.items():
                    sent[lead].append(body)
                    await producer.send_and_wait(t.crm, orjson.dumps(body), key=lead.encode())
                moves = [m for lead in sent for m in offline(sent[lead], rules)[1]]
                into_mql = sum(1 for _, b in moves if b == "mql")
                mql_sal = sum(1 for a, b in moves if (a, b) == ("mql", "sal"))
                assert into_mql > 0 and mql_sal == 1, moves
                await poll(lambda: worker.metric("leadflow_leads_rejected_total"),
                           lambda n: n == 1, 60)
                await page.goto(console.url("/funnel"))
                value = await page.get_attribute(
                    "#conversion g[data-label='MQL → SAL']", "data-value")
                assert value is not None and float(value) == pytest.approx(mql_sal / into_mql)
                accept = await page.get_attribute(
                    "#conversion g[data-label='Acceptance']", "data-value")
                assert accept is not None and float(accept) == pytest.approx(0.5)
                alerts = await worker.metric("leadflow_alerts_total")
                breach = await page.get_attribute("#sla-breaches g[data-label='sales']",
                                                  "data-value")
                assert breach is not None and float(breach) == pytest.approx(1 / alerts)
                assert await page.is_visible("#speed-to-lead g[data-label='sales p50']")
                await page.screenshot(path=str(shots / "funnel.png"), full_page=True)
            finally:
                await context.close()
                await browser.close()
    finally:
        assert console.stop() == 0, console.tail()
    assert "Traceback" not in console.tail(200), console.tail(200)
