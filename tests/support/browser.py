"""What the real-Chromium tests share: the browser, its flags, a site embedding leadflow.js,
and the folder screenshots are kept in.

Used by tests/collector/test_browser.py and tests/collector/test_browser_scored.py; the
Debian `chromium` package provides the browser (playwright's own download is not used).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from pipeline.devkafka.ports import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: JS predicate: leadflow.js has delivered everything it queued.
QUEUE_EMPTY = "() => (localStorage.getItem('leadflow:queue') || '[]') === '[]'"

PAGE = """<!doctype html>
<html><head><title>Pricing - Acme</title>
<script src="{collector}/leadflow.js"></script>
<script>leadflow.init({{host: "{collector}", writeKey: "web-key"}});</script>
</head><body>
<h1>Talk to sales</h1>
<form id="demo" action="/thanks" method="get" data-leadflow-identify
      data-leadflow-track="Demo Requested">
  <input type="email" name="email">
  <input type="text" name="title">
  <input type="password" name="secret">
  <button type="submit">Send</button>
</form>
</body></html>
"""
THANKS = """<!doctype html><html><head><title>Thanks</title>
<script src="{collector}/leadflow.js"></script>
<script>leadflow.init({{host: "{collector}", writeKey: "web-key", page: false}});</script>
</head><body>Thanks!</body></html>"""


@contextlib.asynccontextmanager
async def serve_site(collector_url: str) -> AsyncIterator[str]:
    """A web site on its own 127.0.0.1 port (another origin than the collector) serving
    /pricing (the demo form) and /thanks, both embedding the snippet; yields its origin."""

    async def page(_r: web.Request) -> web.Response:
        return web.Response(text=PAGE.format(collector=collector_url), content_type="text/html")

    async def thanks(_r: web.Request) -> web.Response:
        return web.Response(text=THANKS.format(collector=collector_url), content_type="text/html")

    app = web.Application()
    app.router.add_get("/pricing", page)
    app.router.add_get("/thanks", thanks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def artifacts_dir(test: str) -> Path:
    """Where a browser test keeps its screenshots: $LEADFLOW_TEST_ARTIFACTS/<test>, else
    <repo>/.leadflow/test-artifacts/<test> (git-ignored); created empty of nothing else."""
    root = os.environ.get("LEADFLOW_TEST_ARTIFACTS") or str(
        Path(__file__).resolve().parents[2] / ".leadflow" / "test-artifacts")
    path = Path(root) / test
    path.mkdir(parents=True, exist_ok=True)
    return path
