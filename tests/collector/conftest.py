"""Fixtures for collector tests: a real collector on 127.0.0.1 in front of the real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.support.collector import MakeServer, Server, collector_settings, start_collector


@pytest.fixture
async def make_server(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> AsyncIterator[MakeServer]:
    """Factory: a collector with fresh input topics; `make_server(collector_burst=3)`."""
    runners: list[web.AppRunner] = []

    async def make(bootstrap: str | None = None, **kw: Any) -> Server:
        names = {src: await new_topic(f"events-{src}") for src in ("web", "email", "product",
                                                                     "crm", "deadletter")}
        settings = collector_settings(names, **kw)
        runner, url = await start_collector(settings, bootstrap or kafka_bootstrap)
        runners.append(runner)
        return Server(url, settings, bootstrap or kafka_bootstrap)

    yield make
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def server(make_server: MakeServer) -> Server:
    """A collector with default test settings."""
    return await make_server()


