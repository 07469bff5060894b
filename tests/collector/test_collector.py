"""The HTTP collector against a real broker: what each request puts on which topic."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.devkafka.ports import free_port
from pipeline.models.events import parse_message
from tests.support.collector import MakeServer, Server, basic, consume, count

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def post(url: str, body: Any, *, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = raw if raw is not None else orjson.dumps(body)
    async with aiohttp.ClientSession() as s, s.post(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    ) as r:
        text = await r.read()
        return r.status, orjson.loads(text) if text else {}, dict(r.headers)


CALLS = [
    ("track", {"event": "Demo Requested", "userId": "u-1", "properties": {"plan": "pro"}}),
    ("page", {"name": "Pricing", "anonymousId": "a-1",
              "properties": {"url": "https://acme.example/pricing"}}),
    ("identify", {"userId": "u-1", "traits": {"email": "ada@acme.example"}}),
    ("alias", {"userId": "u-1", "previousId": "a-1"}),
    ("group", {"userId": "u-1", "groupId": "acme", "traits": {"name": "Acme"}}),
    ("t", {"event": "Pricing Viewed", "anonymousId": "a-2"}),
    ("p", {"anonymousId": "a-2"}),
    ("i", {"userId": "u-2", "traits": {}}),
    ("screen", {"name": "Home", "userId": "u-3", "properties": {"variant": "b"}}),
    ("s", {"name": "Settings", "anonymousId": "a-3"}),
]
TYPES = {"t": "track", "p": "page", "i": "identify", "s": "screen"}


@pytest.mark.parametrize(("path", "fields"), CALLS)
async def test_each_endpoint_lands_on_the_source_topic(
    server: Server, path: str, fields: dict[str, Any]
) -> None:
    mid = f"m-{uuid.uuid4()}"
    msg = {"messageId": mid, "timestamp": now_iso(), "context": {"ip": "0.0.0.0"}, **fields}
    status, body, _ = await post(f"{server.url}/v1/{path}", msg, headers=basic("web-key"))
    assert (status, body) == (200, {"success": True})
    [(key, value)] = await consume(server.bootstrap, server.topics.web, 1)
    assert key == (fields.get("userId") or fields.get("anonymousId")).encode()
    assert value["type"] == TYPES.get(path, path)
    assert value["messageId"] == mid
    assert value["receivedAt"].endswith("Z")
    for k, v in fields.items():
        assert value[k] == v
    event = parse_message(orjson.dumps(value), source="web", now_ms=int(time.time() * 1000))
    assert event.message_id == mid
    assert await count(server.bootstrap, server.topics.crm) == 0


async def test_batch_merges_context_and_uses_the_key_source(server: Server) -> None:
    batch = {
        "batch": [
            {"type": "track", "event": "Lead Accepted", "userId": "u-9", "messageId": "b-1",
             "context": {"ip": "1.2.3.4"}},
            {"type": "identify", "userId": "u-9", "messageId": "b-2",
             "traits": {"title": "CTO"}},
            {"type": "page", "anonymousId": "a-9", "messageId": "b-3"},
        ],
        "context": {"library": {"name": "crm-sync", "version": "1"}, "ip": "9.9.9.9"},
        "sentAt": now_iso(),
    }
    status, body, _ = await post(f"{server.url}/v1/batch", batch, headers=basic("crm-key"))
    assert (status, body) == (200, {"success": True})
    got = await consume(server.bootstrap, server.topics.crm, 3)
    assert sorted(v["messageId"] for _, v in got) == ["b-1", "b-2", "b-3"]
    by_id = {v["messageId"]: v for _, v in got}
    assert by_id["b-1"]["context"] == {"library": {"name": "crm-sync", "version": "1"},
                                       "ip": "1.2.3.4"}  # the item's own ip wins
    assert by_id["b-2"]["context"]["ip"] == "9.9.9.9"
    assert by_id["b-3"]["sentAt"] == batch["sentAt"]
    assert await count(server.bootstrap, server.topics.web) == 0


async def test_write_key_in_body_and_text_plain_like_send_beacon(server: Server) -> None:
    body = {"batch": [{"type": "track", "event": "Signed Up", "anonymousId": "a-5",
                       "messageId": "beacon-1"}], "writeKey": "product-key"}
    async with aiohttp.ClientSession() as s, s.post(
        f"{server.url}/v1/b", data=orjson.dumps(body), headers={"Content-Type": "text/plain"}
    ) as r:
        assert r.status == 200
    [(_, value)] = await consume(server.bootstrap, server.topics.product, 1)
    assert value["messageId"] == "beacon-1"
    assert "writeKey" not in value  # a credential never goes on a topic


async def test_gzip_body(server: Server) -> None:
    batch = {"batch": [{"type": "track", "event": f"E{i}", "userId": "u-3",
                        "messageId": f"gz-{i}"} for i in range(50)]}
    raw = gzip.compress(orjson.dumps(batch))
    status, body, _ = await post(f"{server.url}/v1/batch", None, raw=raw,
                                 headers={**basic("email-key"), "Content-Encoding": "gzip"})
    assert (status, body) == (200, {"success": True})
    got = await consume(server.bootstrap, server.topics.email, 50)
    # One key per user: all 50 in order on one partition.
    assert [v["event"] for _, v in got] == [f"E{i}" for i in range(50)]


async def test_missing_message_id_is_generated_and_clock_skew_corrected(server: Server) -> None:
    # The client's clock is an hour behind: sentAt - originalTimestamp is still right.
    msg = {"event": "Trial Started", "userId": "u-4",
           "originalTimestamp": "2020-01-01T10:00:00.000Z", "sentAt": "2020-01-01T10:00:02.000Z"}
    before = datetime.now(UTC)
    status, _, _ = await post(f"{server.url}/v1/track", msg, headers=basic("web-key"))
    assert status == 200
    [(_, value)] = await consume(server.bootstrap, server.topics.web, 1)
    assert value["messageId"].startswith("lf-")
    # Segment's correction: receivedAt - (sentAt - originalTimestamp), to the millisecond
    received = datetime.fromisoformat(value["receivedAt"])
    assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)
    assert datetime.fromisoformat(value["timestamp"]) == received - timedelta(seconds=2)


@pytest.mark.parametrize(
    "headers",
    [{}, basic("nope"), {"Authorization": "Basic !!!"}, {"Authorization": "Bearer web-key"}],
)
async def test_bad_auth_is_401_and_sends_nothing(server: Server, headers: dict[str, str]) -> None:
    msg = {"event": "X", "userId": "u", "messageId": "m"}
    status, body, h = await post(f"{server.url}/v1/track", msg, headers=headers)
    assert status == 401
    assert body["success"] is False and body["error"] == "unauthorized"
    assert "write key" in body["message"]
    assert h.get("WWW-Authenticate", "").startswith("Basic")
    assert await count(server.bootstrap, server.topics.web) == 0


async def test_oversize_message_and_batch_are_413(server: Server) -> None:
    big = {"event": "X", "userId": "u", "messageId": "m", "properties": {"x": "y" * 40_000}}
    status, body, _ = await post(f"{server.url}/v1/track", big, headers=basic("web-key"))
    assert (status, body["error"]) == (413, "too_large")
    # A batch under 500 KB whose one item is over 32 KB: that item alone is refused, by index;
    # its neighbour is produced.
    batch = {"batch": [{"type": "track", "event": "ok", "userId": "u", "messageId": "m1"},
                       {**big, "type": "track"}]}
    status, body, _ = await post(f"{server.url}/v1/batch", batch, headers=basic("web-key"))
    assert status == 200
    [rej] = body["rejected"]
    assert (rej["index"], rej["reason"]) == (1, "oversize") and "batch[1]" in rej["detail"]
    huge = {"batch": [{**big, "type": "track", "properties": {"x": "y" * 30_000}}] * 20}
    status, body, _ = await post(f"{server.url}/v1/batch", huge, headers=basic("web-key"))
    assert status == 413
    # 600 KB of zeros gzip to under 1 KB: the limit applies to the decoded size.
    bomb = gzip.compress(b'{"batch": [' + b" " * 600_000 + b"]}")
    status, body, _ = await post(f"{server.url}/v1/batch", None, raw=bomb,
                                 headers={**basic("web-key"), "Content-Encoding": "gzip"})
    assert (status, body["error"]) == (413, "too_large")
    assert [m["messageId"] for _k, m in await consume(
        server.bootstrap, server.topics.web, 1)] == ["m1"]
    # the refused item is a dead letter (bodies over the limit are refused unread: the
    # client keeps them, as with any 4xx)
    dls = [m for _k, m in await consume(server.bootstrap, server.topics.deadletter, 2,
                                        timeout=5)]
    assert [(d["reason"], d["origin"], d["batch_index"]) for d in dls] == [
        ("oversize", "collector", 1)]


async def test_bad_json_and_bad_items_are_400_naming_the_problem(server: Server) -> None:
    url = f"{server.url}/v1/batch"
    status, body, _ = await post(url, None, raw=b'{"batch": [', headers=basic("web-key"))
    assert (status, body["error"]) == (400, "bad_json")
    assert "not valid JSON" in body["message"]
    status, body, _ = await post(url, None, raw=b"[1]", headers=basic("web-key"))
    assert (status, body["error"]) == (400, "not_an_object")
    status, body, _ = await post(url, {"batch": []}, headers=basic("web-key"))
    assert status == 400 and "batch" in body["message"]
    batch = {"batch": [
        {"type": "track", "event": "ok", "userId": "u", "messageId": "m1"},
        {"type": "track", "event": 5, "userId": "u", "messageId": "m2"},
        {"type": "page", "messageId": "m3"},
        "nope",
    ]}
    status, body, _ = await post(url, batch, headers=basic("web-key"))
    assert status == 200 and body["success"] is True
    errors = {e["index"]: e for e in body["rejected"]}
    assert sorted(errors) == [1, 2, 3]
    assert errors[1]["reason"] == "invalid" and "batch[1]" in errors[1]["detail"]
    assert "event" in errors[1]["detail"]
    assert errors[2]["reason"] == "missing_id"
    assert errors[3]["reason"] == "not_an_object"
    # type that contradicts the endpoint
    status, body, _ = await post(f"{server.url}/v1/page",
                                 {"type": "track", "event": "x", "userId": "u"},
                                 headers=basic("web-key"))
    assert status == 400 and "/v1/page" in body["message"]
    # the valid item of the batch was produced, every refused item is a dead letter with
    # the bytes the client sent
    assert [m["messageId"] for _k, m in await consume(
        server.bootstrap, server.topics.web, 1)] == ["m1"]
    dls = [m for _k, m in await consume(server.bootstrap, server.topics.deadletter, 4)]
    assert sorted((d["batch_index"] is None, d["batch_index"], d["reason"]) for d in dls) == [
        (False, 1, "invalid"), (False, 2, "missing_id"), (False, 3, "not_an_object"),
        (True, None, "invalid")]
    by_index = {d["batch_index"]: d for d in dls}
    assert orjson.loads(base64.b64decode(by_index[3]["value_b64"])) == "nope"
    assert orjson.loads(base64.b64decode(by_index[1]["value_b64"]))["messageId"] == "m2"
    assert all(d["source_topic"] == server.topics.web for d in dls)


async def test_future_timestamp_is_refused(server: Server) -> None:
    msg = {"event": "X", "userId": "u", "messageId": "m", "timestamp": "2999-01-01T00:00:00Z"}
    status, body, _ = await post(f"{server.url}/v1/track", msg, headers=basic("web-key"))
    assert status == 400 and body["errors"][0]["reason"] == "future_timestamp"


async def test_rate_limit_is_429_per_write_key(make_server: MakeServer) -> None:
    srv = await make_server(collector_burst=3, collector_rate_per_s=0.01)
    msg = {"event": "X", "userId": "u", "messageId": "m"}
    statuses = [(await post(f"{srv.url}/v1/track", msg, headers=basic("web-key")))[0]
                for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, body, headers = await post(f"{srv.url}/v1/track", msg, headers=basic("web-key"))
    assert status == 429 and body["error"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1
    # another key has its own bucket
    status, _, _ = await post(f"{srv.url}/v1/track", msg, headers=basic("crm-key"))
    assert status == 200
    assert await count(srv.bootstrap, srv.topics.web) == 3


async def test_cors_preflight_and_headers(make_server: MakeServer) -> None:
    srv = await make_server(collector_cors_origins=["https://www.acme.example"])
    async with aiohttp.ClientSession() as s:
        async with s.options(f"{srv.url}/v1/batch", headers={
            "Origin": "https://www.acme.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        }) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://www.acme.example"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            allowed = r.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed
        async with s.post(f"{srv.url}/v1/track", data=b"{}", headers={
                "Origin": "https://evil.example", **basic("web-key")}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        async with s.post(f"{srv.url}/v1/track", data=b"{", headers={
                "Origin": "https://www.acme.example", **basic("web-key")}) as r:
            # error responses carry CORS headers too, so the page's script can read them
            assert r.status == 400
            assert r.headers["Access-Control-Allow-Origin"] == "https://www.acme.example"


async def test_snippet_is_served(server: Server) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/leadflow.js") as r:
        assert r.status == 200
        assert r.content_type == "application/javascript"
        text = await r.text()
        assert "sendBeacon" in text and "leadflow" in text


async def test_unknown_endpoint_is_404_json(server: Server) -> None:
    status, body, _ = await post(f"{server.url}/v1/scrn", {}, headers=basic("web-key"))
    assert (status, body["error"]) == (404, "not_found")
    async with aiohttp.ClientSession() as s:
        for path in ("/healthz", "/health"):
            async with s.get(f"{server.url}{path}") as r:
                assert (r.status, await r.json()) == (200, {"ok": True})
        async with s.get(f"{server.url}/nope") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_screen_in_a_batch_with_a_bad_item_loses_nothing(server: Server) -> None:
    # what the Node SDK queued when a screen call used to make the whole batch fail
    batch = {"batch": [
        {"type": "identify", "userId": "u-9", "messageId": "b1", "traits": {"email": "a@b.c"}},
        {"type": "screen", "userId": "u-9", "messageId": "b2", "name": "Home"},
        {"type": "track", "userId": "u-9", "messageId": "b3", "event": "Demo Requested"},
        {"type": "track", "userId": "u-9", "messageId": "b4"},  # no event name
    ]}
    status, body, _ = await post(f"{server.url}/v1/batch", batch, headers=basic("web-key"))
    assert status == 200 and [r["index"] for r in body["rejected"]] == [3]
    got = [m for _k, m in await consume(server.bootstrap, server.topics.web, 3)]
    assert [(m["messageId"], m["type"]) for m in got] == [
        ("b1", "identify"), ("b2", "screen"), ("b3", "track")]
    [dl] = [m for _k, m in await consume(server.bootstrap, server.topics.deadletter, 1)]
    assert (dl["batch_index"], dl["reason"], dl["origin"]) == (3, "invalid", "collector")


async def test_kafka_down_is_503_not_2xx(make_server: MakeServer) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    srv = await make_server(bootstrap=closed, collector_ack_timeout_s=3.0)
    msg = {"event": "X", "userId": "u", "messageId": "m"}
    started = time.monotonic()
    status, body, headers = await post(f"{srv.url}/v1/track", msg, headers=basic("web-key"))
    assert (status, body["error"]) == (503, "kafka_unavailable")
    assert body["success"] is False
    assert "Retry-After" in headers
    assert time.monotonic() - started < 10


async def post_from(url: str, body: Any, source_ip: str, *,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any],
                                                                    dict[str, str]]:
    """POST from a given loopback address (Linux routes all of 127/8 to lo)."""
    conn = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    async with aiohttp.ClientSession(connector=conn) as s, s.post(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json",
                                               **(headers or {})}) as r:
        text = await r.read()
        return r.status, orjson.loads(text) if text else {}, dict(r.headers)


def _batch(n: int, tag: str) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "Pricing Viewed", "anonymousId": f"a-{tag}",
                       "messageId": f"{tag}-{i}"} for i in range(n)]}


async def test_an_abusive_ip_is_limited_alone_with_a_shared_write_key(
    make_server: MakeServer,
) -> None:
    # per-IP: 10 messages of burst, refilled at 1 per 100 s; the key's bucket is far larger
    srv = await make_server(collector_ip_burst=10, collector_ip_rate_per_s=0.01,
                            collector_burst=10_000, collector_rate_per_s=1000.0)
    url = f"{srv.url}/v1/batch"
    auth = basic("web-key")
    status, _, _ = await post_from(url, _batch(10, "abuse"), "127.0.0.1", headers=auth)
    assert status == 200
    status, body, headers = await post_from(url, _batch(1, "abuse-more"), "127.0.0.1",
                                            headers=auth)
    assert (status, body["error"]) == (429, "rate_limited")
    assert "client address" in body["message"]
    # the bucket is at 0 tokens: one token at 0.01/s is 100 s away
    assert 99 <= int(headers["Retry-After"]) <= 100
    # another visitor with the same (public) write key is not affected
    status, body, _ = await post_from(url, _batch(5, "visitor"), "127.0.0.2", headers=auth)
    assert (status, body) == (200, {"success": True})
    got = [m["messageId"] for _k, m in await consume(srv.bootstrap, srv.topics.web, 15)]
    assert sorted(got) == sorted([f"abuse-{i}" for i in range(10)] +
                                 [f"visitor-{i}" for i in range(5)])


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(make_server: MakeServer) -> None:
    limits = dict(collector_ip_burst=3, collector_ip_rate_per_s=0.01)
    auth = basic("web-key")
    msg = {"event": "X", "userId": "u", "messageId": "m"}

    # No trusted proxies: a client that rotates X-Forwarded-For is still one client.
    srv = await make_server(**limits)
    statuses = [(await post_from(f"{srv.url}/v1/track", msg, "127.0.0.3", headers={
        **auth, "X-Forwarded-For": f"198.51.100.{i}"}))[0] for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]

    # The peer is a trusted proxy: each forwarded client has its own bucket, and one of
    # them that goes over is refused while the others are not.
    srv = await make_server(collector_trusted_proxies=["127.0.0.0/29"], **limits)
    statuses = [(await post_from(f"{srv.url}/v1/track", msg, "127.0.0.3", headers={
        **auth, "X-Forwarded-For": f"198.51.100.{i}"}))[0] for i in range(5)]
    assert statuses == [200] * 5
    over = [(await post_from(f"{srv.url}/v1/track", msg, "127.0.0.3", headers={
        **auth, "X-Forwarded-For": "6.6.6.6, 203.0.113.9"}))[0] for _ in range(4)]
    assert over == [200, 200, 200, 429]  # the forged first hop does not make a new client
    status, _, _ = await post_from(f"{srv.url}/v1/track", msg, "127.0.0.3", headers={
        **auth, "X-Forwarded-For": "203.0.113.10"})
    assert status == 200
    # a proxy outside the trusted range forwarding for the limited client is not believed:
    # its requests count against its own (fresh) address
    status, _, _ = await post_from(f"{srv.url}/v1/track", msg, "127.0.0.9", headers={
        **auth, "X-Forwarded-For": "203.0.113.9"})
    assert status == 200
