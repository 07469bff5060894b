"""The console's pages over an in-memory backend: content, authentication and bad input.

Every refusal must be a page with a status that says what is wrong, never a traceback.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from html import unescape

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from pipeline.console.app import check_console_exposure, console_authorized, make_app
from pipeline.console.sources import (
    EscalationSeen,
    QueueItem,
    ScoreChangeSeen,
    StageMove,
    TeamQueue,
)
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.stream.clock import Clock
from tests.support.console import MemoryBackend

NOW_MS = 1_767_000_000_000
LEAD = {"lead_id": "u-1", "stage": "mql", "hot": True,
        "scores": {"total": 57.5, "fit": 20, "engagement": 37.5, "product": 0},
        "breakdown": {"top_rules": [{"rule": "demo_request", "group": "engagement",
                                     "points": 30, "count": 1}],
                      "fit": [{"rule": "title_vp", "points": 20}], "top_reasons": []},
        "last_events": [{"rule": "demo_request", "points": 30, "at_ms": NOW_MS - 60_000}],
        "team": "sales", "last_alert_id": "al-1", "owner": "rep-sam",
        "traits": {"title": "VP <Sales>", "company": {"name": "Acme"}},
        "rules_version": "1-abc"}
QUEUE = TeamQueue("sales", (
    QueueItem("owned", "al-1", "u-1", "instant", NOW_MS + 272_000, "rep-sam", None, None),
    QueueItem("unowned", "al-2", "u-2", "hot_score", NOW_MS + 60_000, None,
              "2026-12-29T10:00:00Z", "every rep is at their daily cap"),
), 0)
METRICS = """# TYPE leadflow_stage_moves_total counter
leadflow_stage_moves_total{from_stage="lead",to_stage="mql"} 4
leadflow_stage_moves_total{from_stage="mql",to_stage="sal"} 1
"""


class FixedClock(Clock):
    def __init__(self) -> None:
        super().__init__(NOW_MS, 1.0, lambda: 0.0)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(
        leads={"u-1": LEAD}, queues={"sales": QUEUE}, routed={"al-1", "al-2", "al-old"},
        metrics_texts=[METRICS],
        moves={"u-1": [StageMove(NOW_MS - 90_000, "lead", "mql", "applied", None,
                                 "demo_request", "Demo Requested")]},
        changes={"u-1": [ScoreChangeSeen(NOW_MS - 90_000, "event", "demo_request", "engagement",
                                         25.0, 57.5),
                         ScoreChangeSeen(NOW_MS - 95_000, "decay", "decay", "engagement",
                                         -2.5, 32.5)]},
        escalated=[EscalationSeen("al-9", "u-9", "sales", "rep-ava", "rep-sam",
                                  "2026-12-29T09:00:00Z", "not acknowledged within 300s")])


Factory = Callable[..., AsyncIterator[TestClient]]


@pytest.fixture
async def client(backend: MemoryBackend) -> AsyncIterator[TestClient]:
    app = make_app(backend, token=None, teams=["sales", "emea"], clock=FixedClock())
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def guarded(backend: MemoryBackend) -> AsyncIterator[TestClient]:
    app = make_app(backend, token=SecretStr("s3cret-token"), teams=["sales"],
                   clock=FixedClock())
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_lead_page_shows_stage_score_breakdown_owner_alert_and_traits(
    client: TestClient,
) -> None:
    r = await client.get("/leads/u-1")
    assert r.status == 200
    html = await r.text()
    assert "data-score='57.5'" in html and "id=stage>mql<" in html
    assert "demo_request" in html and "title_vp" in html
    assert "id=owner>rep-sam<" in html and "href='/teams/sales'" in html
    assert "data-sla-state='open'" in html and "4m 32s left" in html
    assert "VP &lt;Sales&gt;" in html and "<Sales>" not in html  # traits escaped
    assert "<td>Acme</td>" in html
    assert "<td>lead</td><td>mql</td><td>applied</td>" in html  # stage history
    # score changes from the worker's /history, newest first, signed
    changes = html.split("id=score-changes")[1].split("</table>")[0]
    assert changes.index("<td>demo_request</td><td>engagement</td><td>+25</td><td>57.5</td>") < (
        changes.index("<td>decay</td><td>decay</td><td>engagement</td><td>-2.5</td><td>32.5</td>"))


async def test_lead_page_says_when_no_score_change_is_kept(
    client: TestClient, backend: MemoryBackend,
) -> None:
    backend.changes.clear()
    html = await (await client.get("/leads/u-1")).text()
    assert "No score change kept" in html and "LEADFLOW_SCORE_LEDGER" in html


async def test_countdowns_count_on_the_workers_clock(
    client: TestClient, backend: MemoryBackend,
) -> None:
    # a worker on a test's fast clock is ahead of the console's
    backend.queues["sales"] = TeamQueue("sales", QUEUE.items, 0, as_of_ms=NOW_MS + 72_000)
    assert "3m 20s left" in await (await client.get("/teams/sales")).text()
    assert "3m 20s left" in await (await client.get("/leads/u-1")).text()


async def test_unknown_lead_is_a_404_page(client: TestClient) -> None:
    r = await client.get("/leads/nobody")
    assert r.status == 404
    html = await r.text()
    assert "No lead with id 'nobody'" in unescape(html) and "Traceback" not in html


@pytest.mark.parametrize(("q", "why"), [("", "the search is empty"), ("   ", "the search is empty"),
                                        ("x" * 121, "at most 120"),
                                        ("a\x00b", "control characters")])
async def test_malformed_search_is_a_400_page(client: TestClient, q: str, why: str) -> None:
    r = await client.get("/search", params={"q": q})
    assert r.status == 400
    assert why in await r.text()


async def test_search_lists_matches_with_links(client: TestClient) -> None:
    r = await client.get("/search", params={"q": "U-1"})
    assert r.status == 200
    html = await r.text()
    assert "href='/leads/u-1'" in html and "Acme" in html
    r = await client.get("/search", params={"q": "zzz"})
    assert r.status == 200 and "No lead" in await r.text()


async def test_search_says_which_worker_did_not_answer(
    client: TestClient, backend: MemoryBackend,
) -> None:
    backend.unanswered = ["http://w2:6066"]
    html = await (await client.get("/search", params={"q": "u-1"})).text()
    assert "href='/leads/u-1'" in html
    assert "The worker at http://w2:6066 did not answer" in html


async def test_queue_shows_owned_with_countdown_unowned_and_escalations(
    client: TestClient,
) -> None:
    r = await client.get("/teams/sales")
    assert r.status == 200
    html = await r.text()
    assert "4m 32s left" in html and "rep-sam" in html
    assert "every rep is at their daily cap" in html
    assert "al-9" in html and "not acknowledged within 300s" in html
    assert html.count(">Acknowledge</button>") == 2


async def test_acknowledge_redirects_to_the_queue_and_a_second_one_is_refused(
    client: TestClient, backend: MemoryBackend,
) -> None:
    r = await client.post("/teams/sales/alerts/al-1/ack", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/teams/sales?acked=al-1"
    assert set(backend.sent) == {"al-1"}
    html = await (await client.get("/teams/sales?acked=al-1")).text()
    assert "Alert al-1 acknowledged." in html
    assert html.count(">Acknowledge</button>") == 1  # al-2 still open
    again = await client.post("/teams/sales/alerts/al-1/ack")
    assert again.status == 409 and "already acknowledged" in await again.text()


async def test_acknowledge_of_unknown_or_closed_alert(client: TestClient) -> None:
    r = await client.post("/teams/sales/alerts/al-nope/ack")
    assert r.status == 404 and "no alert al-nope" in await r.text()
    r = await client.post("/teams/sales/alerts/al-old/ack")
    assert r.status == 409 and "not open" in await r.text()
    r = await client.post("/teams/mars/alerts/al-1/ack")
    assert r.status == 404 and "No team 'mars'" in unescape(await r.text())


async def test_acknowledge_posted_from_another_site_is_refused(
    client: TestClient, backend: MemoryBackend,
) -> None:
    r = await client.post("/teams/sales/alerts/al-1/ack",
                          headers={"Origin": "https://evil.example"})
    assert r.status == 403 and not backend.sent
    # the console's own page, served through a TLS proxy: https, the same host
    host = f"{client.host}:{client.port}"
    r = await client.post("/teams/sales/alerts/al-1/ack", allow_redirects=False,
                          headers={"Origin": f"https://{host}", "Host": host})
    assert r.status == 303 and set(backend.sent) == {"al-1"}


async def test_unknown_team_and_unknown_path(client: TestClient) -> None:
    r = await client.get("/teams/mars")
    assert r.status == 404 and "No team 'mars'" in unescape(await r.text())
    r = await client.get("/nowhere")
    assert r.status == 404 and "no page at /nowhere" in await r.text()


async def test_funnel_page_charts_the_ratios(client: TestClient) -> None:
    r = await client.get("/funnel")
    assert r.status == 200
    html = await r.text()
    assert "data-label='MQL → SAL' data-value='0.25'" in html
    assert "25.0% (1/4)" in html


async def test_worker_down_is_a_502_page(client: TestClient, backend: MemoryBackend) -> None:
    backend.down = True
    for path in ("/leads/u-1", "/teams/sales", "/funnel", "/search?q=u"):
        r = await client.get(path)
        assert r.status == 502, path
        assert "no worker answered" in await r.text()


async def test_unreadable_metrics_are_named(client: TestClient, backend: MemoryBackend) -> None:
    backend.metrics_texts = ["leadflow_stage_moves_total{from_stage=\"a\" 1\n"]
    r = await client.get("/funnel")
    assert r.status == 502
    assert "worker 1's /metrics is not Prometheus text" in unescape(await r.text())


async def test_a_failing_page_is_a_500_page_without_traceback(
    client: TestClient, backend: MemoryBackend,
) -> None:
    backend.leads["broken"] = {"lead_id": "broken", "scores": {"total": "n/a"}}
    r = await client.get("/leads/broken")
    assert r.status == 500
    html = await r.text()
    assert "could not build this page" in html
    assert "Traceback" not in html and "ValueError" not in html


async def test_token_required_wrong_token_refused(guarded: TestClient) -> None:
    r = await guarded.get("/leads/u-1")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert "needs its token" in await r.text()
    r = await guarded.get("/leads/u-1", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    bad = base64.b64encode(b"ae:wrong").decode()
    r = await guarded.get("/leads/u-1", headers={"Authorization": f"Basic {bad}"})
    assert r.status == 401
    good = base64.b64encode(b"ae:s3cret-token").decode()
    r = await guarded.get("/leads/u-1", headers={"Authorization": f"Basic {good}"})
    assert r.status == 200
    r = await guarded.get("/leads/u-1", headers={"Authorization": "Bearer s3cret-token"})
    assert r.status == 200
    assert (await guarded.get("/healthz")).status == 200  # probes need no token


def test_authorization_header_forms() -> None:
    token = SecretStr("t0k")
    assert console_authorized(None, None)
    assert not console_authorized(None, token)
    assert not console_authorized("Basic !!notbase64", token)
    assert not console_authorized("Digest t0k", token)
    assert console_authorized("bearer t0k", token)
    assert console_authorized("Basic " + base64.b64encode(b":t0k").decode(), token)


def test_refuses_a_network_bind_without_a_token() -> None:
    refused = r"LEADFLOW_CONSOLE_HOST=0\.0\.0\.0 .*LEADFLOW_CONSOLE_TOKEN"
    with pytest.raises(ConfigError, match=refused):
        check_console_exposure(Settings(console_host="0.0.0.0"))
    with pytest.raises(ConfigError):
        check_console_exposure(Settings(console_host="0.0.0.0", console_token=SecretStr(" ")))
    check_console_exposure(Settings(console_host="0.0.0.0", console_token=SecretStr("x" * 32)))
    check_console_exposure(Settings())  # loopback by default


def test_funnel_page_from_prometheus_says_so_and_shows_the_ratios() -> None:
    from pipeline.console.funnel import TEAM_SERIES, funnel_from_prometheus
    from pipeline.console.pages import funnel_page

    html = funnel_page(funnel_from_prometheus({
        "leadflow:funnel_mql_to_sal:ratio_rate1d": [({}, 0.4)],
        TEAM_SERIES["alerts"]: [({"team": "sales"}, 8.0)],
        TEAM_SERIES["breach_ratio"]: [({"team": "sales"}, 0.25)],
        TEAM_SERIES["mql_to_sal"]: [({"team": "sales"}, 0.75)]}, ["sales"], window="a day"))
    assert "from Prometheus, over a day" in html
    assert "data-label='MQL → SAL' data-value='0.4'" in html and "40.0%<" in html
    assert "data-label='SAL → SQL' data-value=''" in html  # no sample: no bar, "no data"
    assert "25.0% of 8 alerts" in html
    # conversion by team: a bar per team and ratio, "no data" without a sample
    assert "data-label='sales MQL → SAL' data-value='0.75'" in html and "75.0%<" in html
    assert "data-label='sales SQL → opportunity' data-value=''" in html
