"""The lead API on a scaled-out pipeline: any worker answers for any lead.

Two real workers share the input partitions; a lead's state lives on the worker that owns
its partition, and the other one forwards `GET /leads/{id}` there (Faust's router).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.core.engine import apply
from pipeline.core.outputs import ScoreChange
from pipeline.core.rules import load_default_rules
from pipeline.models.events import parse_message
from pipeline.stream.leadview import history_document, lead_document
from tests.support.workers import Isolated, WorkerProcess, consume, make_isolated

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TITLES = ["VP Sales", "Head of Marketing", "Intern", "CEO", "Software Engineer", "CRO"]
COUNTRIES = ["US", "DE", "FR", "GB", "BR", "JP"]


def identify(i: int, ts: str) -> dict[str, Any]:
    lead = f"api-{i}"
    return {"type": "identify", "messageId": f"{lead}-id", "userId": lead, "timestamp": ts,
            "context": {"library": {"name": "analytics-python", "version": "2.3"}},
            "traits": {"email": f"{lead}@{'gmail.com' if i % 4 == 0 else f'co{i}.com'}",
                       "title": TITLES[i % len(TITLES)], "country": COUNTRIES[i % 6],
                       "employees": [5, 80, 400, 2500][i % 4], "industry": "software",
                       "company": {"name": f"Co {i}"}}}


def expected_document(body: dict[str, Any]) -> dict[str, Any]:
    """The pure core's view of a lead after its one identify, as the API renders it."""
    rules = load_default_rules()
    e = parse_message(orjson.dumps(body), source="web")
    state = apply(None, e, rules, ledger=True).state
    record = {"s": state.to_dict(), "seen": {body["messageId"]: e.timestamp_ms}}
    return lead_document(body["userId"], record, rules)


def expected_changes(body: dict[str, Any]) -> tuple[dict[str, Any], list[ScoreChange]]:
    """The core's score changes for a lead's one identify: `/history` and the topic's."""
    rules = load_default_rules()
    e = parse_message(orjson.dumps(body), source="web")
    res = apply(None, e, rules, ledger=True)
    record = {"s": res.state.to_dict(), "seen": {body["messageId"]: e.timestamp_ms}}
    return (history_document(body["userId"], record, ledger=True),
            [o for o in res.outputs if isinstance(o, ScoreChange)])


async def _both_ready(workers: list[WorkerProcess], timeout: float = 120) -> list[int]:
    """Wait until both workers are ready at once (the second one's join rebalances both)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [await w.get("/readyz") for w in workers]
        if all(s == 200 for s, _ in states):
            return [int(d["assigned_partitions"]) for _, d in states]
        await asyncio.sleep(0.5)
    raise AssertionError(f"not ready: {states}\n" + "\n".join(w.tail() for w in workers))


async def test_any_worker_answers_for_any_lead(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
) -> None:
    assert isolated.settings.partitions == 4
    w1 = worker_factory(isolated)
    w2 = worker_factory(isolated)
    assert w1.web_port != w2.web_port
    await w1.wait_ready()
    await w2.wait_ready()
    assigned = await _both_ready([w1, w2])
    # both own a share of the partitions: some answers must come from the other worker
    assert all(n > 0 for n in assigned), assigned

    ts = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="milliseconds")
    bodies = [identify(i, ts.replace("+00:00", "Z")) for i in range(12)]
    for body in bodies:
        await producer.send_and_wait(isolated.settings.topics.web, orjson.dumps(body),
                                     key=body["userId"].encode())

    # wait until every lead is scored (asking either worker)
    pending = {b["userId"] for b in bodies}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for lead in sorted(pending):
            status, doc = await w1.get(f"/leads/{lead}")
            if status == 200 and doc["events_seen"] == 1:
                pending.discard(lead)
        await asyncio.sleep(0.3)
    assert not pending, f"not scored: {pending}\n{w1.tail()}\n{w2.tail()}"

    stages = set()
    for body in bodies:
        lead = body["userId"]
        expected = expected_document(body)
        (s1, d1), (s2, d2) = [await w.get(f"/leads/{lead}") for w in (w1, w2)]
        assert (s1, s2) == (200, 200), (lead, d1, d2)
        assert d1 == d2, lead
        assert d1["stage"] == expected["stage"] and d1["scores"] == expected["scores"], lead
        assert d1 == expected, lead
        stages.add(d1["stage"])
        assert d1["traits"]["country"] == body["traits"]["country"]
    assert len({orjson.dumps(expected_document(b)["scores"]) for b in bodies}) > 1  # varied

    # the score ledger: /history from either worker, and every change on the topic
    wanted: list[tuple[Any, ...]] = []
    for body in bodies:
        history, changes = expected_changes(body)
        assert changes, body["userId"]  # every identify here earns fit points
        h1, h2 = [await w.get(f"/leads/{body['userId']}/history") for w in (w1, w2)]
        assert h1 == h2 == (200, history), (body["userId"], h1, h2)
        wanted += [(c.lead_id, c.kind, c.rule, c.group, round(c.delta, 4), round(c.total, 2),
                    c.message_id) for c in changes]
    topic = isolated.settings.topics.score_changes
    got = await consume(isolated.bootstrap, [topic],
                        until=lambda ms: len(ms) >= len(wanted))
    assert sorted((m["lead_id"], m["kind"], m["rule"], m["group"], m["delta"],
                   m["scores"]["total"], m["message_id"]) for _, _, m in got) == sorted(wanted)
    assert all(key == m["lead_id"].encode() for _, key, m in got)
    # a lead's changes come in the core's order (one partition per lead)
    per_lead = [m for _, _, m in got if m["lead_id"] == bodies[1]["userId"]]
    assert [m["rule"] for m in per_lead] == [
        c.rule for c in expected_changes(bodies[1])[1]]

    for w in (w1, w2):
        status, doc = await w.get("/leads/unknown")
        assert status == 404 and doc == {"error": "no lead with id 'unknown'"}
        assert await w.get("/leads/unknown/history") == (
            404, {"error": "no lead with id 'unknown'"})
        status, doc = await w.get("/healthz")
        assert (status, doc) == (200, {"status": "ok"})
        status, doc = await w.get("/readyz")
        assert status == 200 and doc["ready"] is True


async def test_the_lead_api_needs_the_token_and_health_does_not(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As deployed: all interfaces, so the worker starts only because a token is set.
    token = "t0ken-" + "x" * 26
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home", extra_env={
        "LEADFLOW_WEB_HOST": "0.0.0.0", "LEADFLOW_API_TOKEN": token})
    w = worker_factory(iso)
    await w.wait_ready()  # /readyz answers without a token
    body = identify(1, datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    await producer.send_and_wait(iso.settings.topics.web, orjson.dumps(body),
                                 key=body["userId"].encode())
    deadline = time.monotonic() + 60
    while (await w.get("/leads/api-1", token=token))[0] != 200:
        assert time.monotonic() < deadline, w.tail()
        await asyncio.sleep(0.3)

    refusal = {"error": "this path needs 'Authorization: Bearer <token>' "
                        "(the worker's LEADFLOW_API_TOKEN)"}
    for path in ("/leads/api-1", "/leads/unknown", "/leads/api-1/history", "/teams/sales/queue",
                 "/search?q=co"):
        for wrong in (None, "", "t0ken", token + "x"):
            assert await w.get(path, token=wrong) == (401, refusal), (path, wrong)
    status, doc = await w.get("/leads/api-1", token=token)
    assert status == 200 and doc["traits"]["title"] == body["traits"]["title"]
    assert (await w.get("/teams/sales/queue", token=token))[0] == 200
    # the search the console asks every worker: by company, by e-mail; a malformed one is 400
    for q in ("co%201", "API-1@CO1"):
        status, found = await w.get(f"/search?q={q}", token=token)
        assert status == 200, found
        assert [m["lead_id"] for m in found["matches"]] == ["api-1"], (q, found)
        assert found["matches"][0]["company"] == "Co 1"
    status, doc = await w.get("/search?q=%20", token=token)
    assert status == 400 and "the search is empty" in doc["error"], doc
    # Open, and free of personal data: no lead id, title or company in any of them.
    for path in ("/healthz", "/readyz", "/metrics"):
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(w.url(path)) as r:
            assert r.status == 200, path
            text = await r.text()
        for personal in ("api-1", body["traits"]["title"], "Co 1", "co1.com"):
            assert personal not in text, (path, personal)

    # `leadflow alerts queue` sends LEADFLOW_API_TOKEN; without it, says what to set.
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    monkeypatch.setenv("LEADFLOW_API_TOKEN", token)
    out = CliRunner().invoke(app, ["alerts", "queue", "--team", "sales", "--json",
                                   "--url", w.url("")])
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.stdout)["team"] == "sales"
    monkeypatch.delenv("LEADFLOW_API_TOKEN")
    out = CliRunner().invoke(app, ["alerts", "queue", "--team", "sales", "--url", w.url("")])
    assert out.exit_code == 1
    assert "answered 401" in out.output
    assert "(set LEADFLOW_API_TOKEN to the worker's token)" in out.output
