"""What the console reads: the stage-change/escalation feed, queue documents, and the
workers' API over HTTP (two stand-in workers on loopback ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from pipeline.console import sources
from pipeline.console.sources import Feed, WorkerClient, parse_queue
from pipeline.devkafka.ports import free_port
from pipeline.errors import InvalidQuery, WorkerUnreachable


def stage_change(lead: str, at_ms: int, to: str) -> bytes:
    return orjson.dumps({"lead_id": lead, "from_stage": "lead", "to_stage": to,
                         "status": "applied", "at_ms": at_ms, "reason": None,
                         "cause": {"rule": "demo_request", "event_name": "Demo Requested"}})


def test_feed_keeps_each_leads_moves_in_time_order_and_skips_garbage() -> None:
    feed = Feed()
    feed.add_stage_change(stage_change("a", 20, "sql"))
    feed.add_stage_change(stage_change("a", 10, "mql"))
    for junk in (None, b"", b"not json", b"[1]", b'{"lead_id": 7}'):
        feed.add_stage_change(junk)
        feed.add_escalation(junk)
    assert [(m.at_ms, m.to_stage, m.rule) for m in feed.history("a")] == \
        [(10, "mql", "demo_request"), (20, "sql", "demo_request")]
    assert feed.history("nobody") == []


def test_feed_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "HISTORY_LEADS", 2)
    feed = Feed()
    for n in range(sources.HISTORY_PER_LEAD + 5):
        feed.add_stage_change(stage_change("a", n, "mql"))
    assert len(feed.history("a")) == sources.HISTORY_PER_LEAD
    feed.add_stage_change(stage_change("b", 1, "mql"))
    feed.add_stage_change(stage_change("c", 1, "mql"))  # "a" changed longest ago: it goes
    assert feed.history("a") == [] and feed.history("c")


def test_escalations_newest_first_by_team() -> None:
    feed = Feed()
    for n, team in enumerate(["sales", "emea", "sales"]):
        feed.add_escalation(orjson.dumps({"alert_id": f"al-{n}", "lead_id": "x", "team": team,
                                          "from_owner": "a", "to_owner": "b",
                                          "breached_at": "t", "reason": "late"}))
    assert [e.alert_id for e in feed.escalations("sales")] == ["al-2", "al-0"]
    assert len(feed.escalations()) == 3


def test_parse_queue_reads_every_section_and_the_workers_clock() -> None:
    q = parse_queue({"team": "sales", "as_of": "2026-12-03T10:00:00+00:00",
                     "waiting": [{"alert_id": "w", "lead_id": "l1", "kind": "instant",
                                  "due_at": "2026-12-03T11:00:00+00:00", "since": "s",
                                  "reason": "team closed"}],
                     "unowned": [{"alert_id": "u", "lead_id": "l2", "kind": "hot_score",
                                  "since": "s", "reason": "all at cap"}],
                     "owned": [{"alert_id": "o", "lead_id": "l3", "kind": "instant",
                                "due_at": "2026-12-03T10:05:00Z", "owner": "rep"}]})
    assert [(i.section, i.alert_id) for i in q.items] == \
        [("waiting", "w"), ("unowned", "u"), ("owned", "o")]
    owned = q.find("o")
    assert owned is not None and owned.due_ms is not None and q.as_of_ms is not None
    assert owned.due_ms - q.as_of_ms == 300_000
    assert q.find("missing") is None


async def _worker(matches: list[dict[str, object]], token: str) -> web.AppRunner:
    async def search(r: web.Request) -> web.Response:
        if r.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "token"}, status=401)
        if not r.query.get("q", "").strip():
            return web.json_response({"error": "the search is empty"}, status=400)
        return web.json_response({"matches": matches})

    async def lead(r: web.Request) -> web.Response:
        return web.json_response({"error": "no lead"}, status=404)

    app = web.Application()
    app.router.add_get("/search", search)
    app.router.add_get("/leads/{id}", lead)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


@pytest.fixture
async def two_workers() -> AsyncIterator[list[str]]:
    runners, urls = [], []
    for matches in ([{"lead_id": "a", "score": 10}, {"lead_id": "b", "score": 50}],
                    [{"lead_id": "c", "score": 30}]):
        runner = await _worker(matches, "tok")
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}")
    yield urls
    for runner in runners:
        await runner.cleanup()


async def test_search_asks_every_worker_and_merges_by_score(two_workers: list[str]) -> None:
    client = WorkerClient(two_workers, SecretStr("tok"))
    try:
        found = await client.search("x")
        assert [m["lead_id"] for m in found.matches] == ["b", "c", "a"] and not found.unanswered
        with pytest.raises(InvalidQuery, match="the search is empty"):
            await client.search(" ")
        assert await client.lead("nobody") is None
    finally:
        await client.close()


async def test_a_wrong_worker_token_or_no_worker_is_named(two_workers: list[str]) -> None:
    client = WorkerClient(two_workers, SecretStr("wrong"))
    try:
        with pytest.raises(WorkerUnreachable, match=r"refused the console's token.*"
                                                    r"LEADFLOW_API_TOKEN"):
            await client.search("x")
    finally:
        await client.close()
    dead = WorkerClient([f"http://127.0.0.1:{free_port()}"], None)
    try:
        with pytest.raises(WorkerUnreachable, match="no worker answered at"):
            await dead.lead("a")
    finally:
        await dead.close()


async def test_search_names_a_worker_that_does_not_answer(two_workers: list[str]) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    client = WorkerClient([*two_workers, gone], SecretStr("tok"))
    try:
        found = await client.search("x")
        assert [m["lead_id"] for m in found.matches] == ["b", "c", "a"]
        assert found.unanswered == (gone,)
    finally:
        await client.close()
