"""A real headless Chromium runs leadflow.js from the collector; its calls reach Kafka.

Needs the Debian `chromium` package (/usr/bin/chromium) and the `playwright` Python package
(its own browser download is not used); tests/support/browser.py has the page it loads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.models.events import parse_message
from tests.support.browser import CHROMIUM, FLAGS, QUEUE_EMPTY, serve_site
from tests.support.collector import MakeServer, Server, consume, count, post_sentinel

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.asyncio(loop_scope="session")]

@pytest.fixture
async def site(make_server: MakeServer) -> AsyncIterator[tuple[Server, str]]:
    """The collector, and a web site on another 127.0.0.1 port that embeds the snippet."""
    srv = await make_server()
    async with serve_site(srv.url) as origin:
        yield srv, origin


async def test_page_view_and_form_submit_reach_kafka(
    site: tuple[Server, str], tmp_path: Path
) -> None:
    # A missing browser fails the test: a skipped end-to-end test must not pass for green.
    assert Path(CHROMIUM).exists(), "chromium is not installed (apt-get install -y chromium)"
    import playwright.async_api as playwright_api
    srv, origin = site
    async with playwright_api.async_playwright() as pw:
        # A persistent context in a fresh folder: the "fresh user-data-dir" of a clean browser.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await page.goto(f"{origin}/pricing?utm_source=newsletter&utm_campaign=spring")
            # the page view is sent on load: wait until the queue is empty
            await page.wait_for_function(QUEUE_EMPTY, timeout=15_000)
            anon = await page.evaluate("() => localStorage.getItem('leadflow:anonymousId')")
            await page.fill("input[name=email]", "ada@acme.example")
            await page.fill("input[name=title]", "VP Engineering")
            await page.fill("input[name=secret]", "hunter2")
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            await page.wait_for_function(QUEUE_EMPTY, timeout=15_000)
        finally:
            await context.close()

    # The browser is closed: a sentinel sent now is the topic's last record, so a late
    # duplicate of the browser's calls (a retried request) would show up before it.
    sentinel = await post_sentinel(srv)
    got = await consume(srv.bootstrap, srv.topics.web, 4, timeout=30)
    assert [v.get("messageId") for _, v in got][3:] == [sentinel], got
    values: list[dict[str, Any]] = [v for _, v in got[:3]]
    assert sorted(v["type"] for v in values) == ["identify", "page", "track"], console
    by_type = {v["type"]: v for v in values}
    pv = by_type["page"]
    assert pv["anonymousId"] == anon
    assert pv["context"]["page"]["path"] == "/pricing"
    assert pv["context"]["page"]["title"] == "Pricing - Acme"
    assert pv["context"]["campaign"] == {"source": "newsletter", "name": "spring"}
    assert pv["context"]["library"]["name"] == "leadflow.js"
    ident = by_type["identify"]
    assert ident["userId"] == "ada@acme.example"
    assert ident["anonymousId"] == anon
    assert ident["traits"] == {"email": "ada@acme.example", "title": "VP Engineering"}
    track = by_type["track"]
    assert track["event"] == "Demo Requested"
    assert track["userId"] == "ada@acme.example"
    assert track["properties"]["form_id"] == "demo"
    # The messages are valid Segment calls for the pipeline, with browser-made ids.
    now = int(time.time() * 1000)
    events = [parse_message(orjson.dumps(v), source="web", now_ms=now) for v in values]
    assert len({e.message_id for e in events}) == 3
    assert all(abs(e.timestamp_ms - now) < 60_000 for e in events)
    assert await count(srv.bootstrap, srv.topics.web) == 4  # the three and the sentinel
