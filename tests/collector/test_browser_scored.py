"""Browser to score: leadflow.js in a real headless Chromium, the collector, a real worker.

The collector writes to a test's isolated input topics, a `leadflow worker` process reads
them, and the lead the form identified shows up on `GET /leads/<userId>` with a score.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import CHROMIUM, FLAGS, QUEUE_EMPTY, serve_site
from tests.support.collector import MakeServer, Server, consume
from tests.support.workers import Isolated, WorkerProcess, make_isolated

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.asyncio(loop_scope="session")]

EMAIL = "grace@acme.example"


@pytest.fixture
async def iso(kafka_bootstrap: str, tmp_path: Path) -> Isolated:
    """Isolated worker settings; their topics (created) are the collector's too."""
    return await make_isolated(kafka_bootstrap, tmp_path / "home")


@pytest.fixture
async def scored_site(
    make_server: MakeServer, iso: Isolated
) -> AsyncIterator[tuple[Server, str]]:
    """A collector writing to the isolated topics, and a site embedding the snippet."""
    srv = await make_server(topics=iso.settings.topics)
    async with serve_site(srv.url) as origin:
        yield srv, origin


async def _browse(origin: str, profile: Path) -> None:
    """Page view, then the demo form submitted with an e-mail (identify + track)."""
    import playwright.async_api as playwright_api

    async with playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(f"{origin}/pricing?utm_source=newsletter")
            await page.wait_for_function(QUEUE_EMPTY, timeout=15_000)
            await page.fill("input[name=email]", EMAIL)
            await page.fill("input[name=title]", "VP Engineering")
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            await page.wait_for_function(QUEUE_EMPTY, timeout=15_000)
        finally:
            await context.close()


async def test_form_submit_from_browser_is_scored_by_a_worker(
    scored_site: tuple[Server, str], iso: Isolated, tmp_path: Path
) -> None:
    assert Path(CHROMIUM).exists(), "chromium is not installed (apt-get install -y chromium)"
    srv, origin = scored_site
    assert srv.topics.web == iso.settings.topics.web
    worker = WorkerProcess(iso, tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        _, before = await worker.get(f"/leads/{EMAIL}")
        await _browse(origin, tmp_path / "profile")

        got = await consume(srv.bootstrap, srv.topics.web, 3, timeout=30)
        assert sorted(v["type"] for _, v in got) == ["identify", "page", "track"]
        assert {v.get("userId") for _, v in got} == {None, EMAIL}

        # The anonymous page view is stitched to the lead on identify: all three count.
        deadline = time.monotonic() + 60
        doc: Any = None
        while time.monotonic() < deadline:
            status, doc = await worker.get(f"/leads/{EMAIL}")
            if status == 200 and doc["events_seen"] >= len(got):
                break
            await asyncio.sleep(0.5)
        assert doc is not None and doc.get("events_seen") == len(got), (doc, worker.tail())
        assert before == {"error": f"no lead with id {EMAIL!r}"}
        assert doc["scores"]["total"] > 0, doc
        assert doc["traits"].get("title") == "VP Engineering"
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.stop()
