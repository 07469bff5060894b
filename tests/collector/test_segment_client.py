"""The unmodified analytics-python library talks to the collector; events land on Kafka."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import segment.analytics as analytics

from pipeline.models.events import parse_message
from tests.support.collector import MakeServer, consume

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def segment_globals() -> Iterator[None]:
    """Put analytics-python's module-level settings back after the test."""
    saved = {k: getattr(analytics, k) for k in ("write_key", "host", "sync_mode", "gzip",
                                                 "on_error", "max_retries")}
    yield
    analytics.default_client = None
    for k, v in saved.items():
        setattr(analytics, k, v)


def _send_with_segment(url: str, write_key: str, gzip: bool) -> list[Any]:
    """Runs in a thread: the library's HTTP client is blocking."""
    errors: list[Any] = []
    analytics.default_client = None
    analytics.write_key = write_key
    analytics.host = url
    analytics.sync_mode = True  # each call posts /v1/batch before returning
    analytics.gzip = gzip
    analytics.max_retries = 0
    analytics.on_error = lambda error, items: errors.append(error)
    analytics.identify("ada@acme.example", {"email": "ada@acme.example", "title": "VP Sales",
                                            "company": "Acme", "employees": 500})
    analytics.page("ada@acme.example", category="Marketing", name="Pricing",
                   properties={"url": "https://acme.example/pricing", "path": "/pricing"})
    analytics.track("ada@acme.example", "Form Submitted", {"form": "contact"})
    analytics.flush()
    return errors


@pytest.mark.parametrize("gzip", [False, True])
async def test_analytics_python_calls_land_on_kafka(
    make_server: MakeServer, segment_globals: None, gzip: bool
) -> None:
    srv = await make_server()
    errors = await asyncio.to_thread(_send_with_segment, srv.url, "web-key", gzip)
    assert errors == []
    got = await consume(srv.bootstrap, srv.topics.web, 3)
    assert [k for k, _ in got] == [b"ada@acme.example"] * 3
    values = [v for _, v in got]
    assert values[0]["context"]["library"]["name"] == "analytics-python"
    now = int(time.time() * 1000)
    events = [parse_message(orjson.dumps(v), source="web", now_ms=now) for v in values]
    assert [(e.type, e.name) for e in events] == [
        ("identify", ""), ("page", "Pricing"), ("track", "Form Submitted")]
    assert {e.lead_id for e in events} == {"ada@acme.example"}
    assert events[0].traits["title"] == "VP Sales"
    assert events[1].url == "https://acme.example/pricing"
    assert all(abs(e.timestamp_ms - now) < 60_000 for e in events)
    assert len({e.message_id for e in events}) == 3

    from pipeline.core.engine import apply, scores
    from pipeline.core.rules import load_default_rules

    rules = load_default_rules()
    state = None
    totals = []
    for e in events:
        state = apply(state, e, rules).state
        totals.append(scores(state, rules)["total"])
    # shipped rules: the pricing page earns page_view 1 + pricing_page 10, the form (not a
    # contact-sales one) form_submitted 10, whatever the fit
    assert [round(b - a, 6) for a, b in itertools.pairwise(totals)] == [11.0, 10.0]


async def test_analytics_python_with_a_bad_write_key_gets_an_error(
    make_server: MakeServer, segment_globals: None
) -> None:
    srv = await make_server()

    def send() -> list[Any]:
        errors: list[Any] = []
        client = analytics.Client("wrong-key", host=srv.url, sync_mode=True, max_retries=0,
                                  on_error=lambda error, items: errors.append(error))
        try:
            client.track("u-1", "Demo Requested")
        except Exception as exc:  # sync mode raises the API error
            errors.append(exc)
        return errors

    errors = await asyncio.to_thread(send)
    assert len(errors) == 1
    assert "401" in str(errors[0]) and "unknown write key" in str(errors[0])


def _send_mixed(url: str, write_key: str) -> list[Any]:
    """A screen call and a message the collector refuses (a timestamp far in the future),
    queued together by the library's batching consumer."""
    from datetime import UTC, datetime

    errors: list[Any] = []
    analytics.default_client = None
    analytics.write_key = write_key
    analytics.host = url
    analytics.sync_mode = False
    analytics.max_retries = 0
    analytics.on_error = lambda error, items: errors.append(error)
    analytics.identify("kim@acme.example", {"email": "kim@acme.example"})
    analytics.screen("kim@acme.example", name="Home", properties={"variant": "b"})
    analytics.track("kim@acme.example", "Demo Requested",
                    timestamp=datetime(2999, 1, 1, tzinfo=UTC))
    analytics.track("kim@acme.example", "Demo Requested")
    analytics.flush()
    return errors


async def test_analytics_python_mixed_batch_loses_nothing(
    make_server: MakeServer, segment_globals: None
) -> None:
    srv = await make_server()
    errors = await asyncio.to_thread(_send_mixed, srv.url, "web-key")
    assert errors == []  # one refused item does not fail the batch the SDK sent
    got = [v for _, v in await consume(srv.bootstrap, srv.topics.web, 3)]
    assert sorted(v["type"] for v in got) == ["identify", "screen", "track"]
    [screen] = [v for v in got if v["type"] == "screen"]
    assert screen["name"] == "Home"
    [dl] = [v for _, v in await consume(srv.bootstrap, srv.topics.deadletter, 1)]
    assert (dl["reason"], dl["origin"]) == ("future_timestamp", "collector")
    assert orjson.loads(base64.b64decode(dl["value_b64"]))["event"] == (
        "Demo Requested")
