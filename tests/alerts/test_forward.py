"""`leadflow alerts forward` against the real broker and a local, misbehaving webhook."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.alerts.forward import (
    REASON_REJECTED,
    REASON_UNAVAILABLE,
    ForwardConfig,
    Forwarder,
    backoff_delay,
    is_transient,
    retry_after_s,
)
from tests.support.alerts import TEAM, AlertTopics, make_alert, produce, read_all

REPO = Path(__file__).resolve().parents[2]


# --- pure --------------------------------------------------------------------------------------


def test_retry_after_forms() -> None:
    now = datetime(2024, 5, 2, 10, 0, 0, tzinfo=UTC)
    assert retry_after_s("0") == 0.0
    assert retry_after_s(" 7 ") == 7.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        bound = min(30.0, 0.5 * 2 ** (attempt - 1))
        samples = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= s <= bound for s in samples)
        assert max(samples) > bound * 0.8  # the whole range is used: jitter, not a constant
    assert len({round(backoff_delay(5, 0.5, 30.0, rng), 6) for _ in range(20)}) > 1


def test_which_statuses_are_retried() -> None:
    assert [s for s in (200, 400, 401, 404, 408, 409, 413, 422, 429, 500, 502, 503, 599)
            if is_transient(s)] == [408, 429, 500, 502, 503, 599]


# --- a webhook that misbehaves on purpose -------------------------------------------------------


class Receiver:
    """A local webhook: scripted failures first, optional outage, per-id rejections."""

    def __init__(self, script: list[str] | None = None) -> None:
        self.script = deque(script or [])
        self.down = False
        self.down_after: int | None = None  # go down after this many accepted requests
        self.reject: dict[str, int] = {}  # alert id -> permanent status
        self.always_fail: set[str] = set()
        self.accepted: list[str] = []  # Idempotency-Key of every 2xx, duplicates included
        self.bodies: dict[str, Any] = {}
        self.failed = 0
        self.url = ""
        self.seen_at: list[float] = []  # monotonic time of every request
        self.hang = asyncio.Event()  # "hang" requests wait on this (never set: forever)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key", "")
        assert request.headers.get("Content-Type") == "application/json"
        body = orjson.loads(await request.read())
        self.seen_at.append(time.monotonic())
        if key in self.reject:
            return web.Response(status=self.reject[key])
        if key in self.always_fail or self.down:
            self.failed += 1
            return web.Response(status=503)
        if self.script:
            mode = self.script.popleft()
            self.failed += 1
            if mode == "503":
                return web.Response(status=503, text="busy")
            if mode == "reset":
                assert request.transport is not None
                request.transport.abort()  # the client sees the connection drop
                return web.Response(status=200)
            if mode == "slow":
                await asyncio.sleep(3)  # longer than the forwarder's request timeout
                return web.Response(status=200)
            if mode == "429":
                return web.Response(status=429, headers={"Retry-After": "0"})
            if mode == "429-hour":
                return web.Response(status=429, headers={"Retry-After": "3600"})
            if mode == "hang":
                await self.hang.wait()
                return web.Response(status=200)
            raise AssertionError(mode)
        self.accepted.append(key)
        self.bodies[key] = body
        if self.down_after is not None and len(self.accepted) >= self.down_after:
            self.down = True
        return web.Response(status=200, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A Receiver served on 127.0.0.1 at a free port."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.addresses
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


async def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def committed(bootstrap: str, group: str, tps: list[TopicPartition]) -> list[int | None]:
    """The group's committed offsets of ``tps``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return [await consumer.committed(tp) for tp in tps]
    finally:
        await consumer.stop()


async def start_forwarder(
    topics: AlertTopics, url: str, group: str, log: Path
) -> asyncio.subprocess.Process:
    """`leadflow alerts forward` as a real process (fast backoff and session timeout)."""
    env = {**os.environ, **topics.env()}
    with log.open("ab") as fh:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline.cli.main", "alerts", "forward",
            "--team", TEAM, "--url", url, "--group", group,
            "--backoff-base", "0.05", "--backoff-cap", "0.3", "--request-timeout", "1",
            "--session-timeout-ms", "6000",
            cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=fh, stderr=fh,
        )


# --- the forwarder process ----------------------------------------------------------------------


@pytest.mark.integration
async def test_forwarder_survives_failures_and_sigkill_without_losing_alerts(
    alert_topics: AlertTopics, receiver: Receiver, tmp_path: Path
) -> None:
    n = 20
    ids = [f"fw-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    routing = alert_topics.topics.routing(TEAM)
    by_partition: dict[int, list[str]] = {0: [], 1: []}
    for i, aid in enumerate(ids):
        await produce(alert_topics.bootstrap, routing, [make_alert(aid, f"lead-{i}")],
                      partition=i % 2)
        by_partition[i % 2].append(aid)
    receiver.script.extend(["503", "reset", "slow", "429"])
    receiver.down_after = 6  # then an outage, during which the first forwarder is killed
    group = f"fw-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "forwarder.log"

    first = await start_forwarder(alert_topics, receiver.url, group, log)
    try:
        await wait_for(lambda: receiver.down, 30, "the first 6 deliveries")
        failed_before = receiver.failed
        await wait_for(lambda: receiver.failed >= failed_before + 3, 15, "retries during outage")
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    delivered_before_kill = len(set(receiver.accepted))
    assert 6 <= delivered_before_kill < n

    second = await start_forwarder(alert_topics, receiver.url, group, log)
    try:
        await asyncio.sleep(1.0)
        receiver.down_after = None
        receiver.down = False  # the endpoint recovers
        await wait_for(lambda: set(receiver.accepted) >= set(ids), 40, "every alert delivered")
    finally:
        second.send_signal(signal.SIGTERM)  # graceful: finish and leave the group
        await asyncio.wait_for(second.wait(), 20)
    output = log.read_text()
    assert second.returncode == 0, output

    # Nothing lost, nothing invented, bodies intact.
    assert set(receiver.accepted) == set(ids)
    assert receiver.bodies[ids[3]] == make_alert(ids[3], "lead-3")
    # In order per partition (first deliveries).
    first_seen = list(dict.fromkeys(receiver.accepted))
    for part_ids in by_partition.values():
        assert [a for a in first_seen if a in part_ids] == part_ids
    duplicates = len(receiver.accepted) - len(set(receiver.accepted))
    print(f"\nforwarder: {n} alerts, {len(receiver.accepted)} deliveries, "
          f"{duplicates} duplicates, {delivered_before_kill} before SIGKILL")
    assert duplicates <= 2  # at most the one in-flight alert per partition at the kill
    # Everything is committed: a third run would have nothing to send.
    assert await committed(alert_topics.bootstrap, group,
                           [TopicPartition(routing, 0), TopicPartition(routing, 1)]) == [
        len(by_partition[0]), len(by_partition[1])
    ]
    # Logs name alert ids and statuses, never personal data.
    assert "delivered (HTTP 200" in output
    for seen in ("failed (503)", "failed (ServerDisconnectedError)", "failed (timeout)",
                 "failed (429); retrying in 0.00s", "delivered (HTTP 200, attempt 5)"):
        assert seen in output, seen
    assert "@example.com" not in output
    assert "forwarder stopped:" in output


@pytest.mark.integration
async def test_rejected_and_exhausted_alerts_are_parked_and_the_queue_moves_on(
    alert_topics: AlertTopics, receiver: Receiver
) -> None:
    t = alert_topics.topics
    routing = t.routing(TEAM)
    alerts = [make_alert(aid, f"lead-{aid}") for aid in ("a", "bad", "c", "flaky", "d")]
    await produce(alert_topics.bootstrap, routing, alerts, partition=0)
    receiver.reject["bad"] = 400
    receiver.always_fail.add("flaky")
    group = f"fw-{uuid.uuid4().hex[:8]}"
    cfg = ForwardConfig(
        bootstrap=alert_topics.bootstrap, topic=routing, url=receiver.url, group_id=group,
        deadletter_topic=t.deadletter, max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.05,
        request_timeout_s=2, max_alerts=5,
    )
    stats = await asyncio.wait_for(Forwarder(cfg).run(), 30)

    assert receiver.accepted == ["a", "c", "d"]
    assert (stats.delivered, stats.parked) == (3, 2)
    assert receiver.failed == 3  # "flaky": the first try and 2 retries
    letters = [orjson.loads(r.value) for r in await read_all(alert_topics.bootstrap, t.deadletter)]
    assert [(d["reason"], d["source_topic"], d["partition"], d["offset"]) for d in letters] == [
        (REASON_REJECTED, routing, 0, 1), (REASON_UNAVAILABLE, routing, 0, 3)
    ]
    assert "HTTP 400" in letters[0]["detail"]
    assert orjson.loads(base64.b64decode(letters[0]["value_b64"])) == alerts[1]
    assert base64.b64decode(letters[0]["key_b64"]) == b"lead-bad"
    assert await committed(alert_topics.bootstrap, group, [TopicPartition(routing, 0)]) == [5]


@pytest.mark.integration
async def test_forward_to_a_missing_topic_fails_with_one_line(alert_topics: AlertTopics) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.cli.main", "alerts", "forward", "--team", "nosuchteam",
        "--url", "http://127.0.0.1:9/hook",
        cwd=REPO, env={**os.environ, **alert_topics.env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines()[-1].startswith(
        "error: topic " + alert_topics.topics.routing("nosuchteam") + " does not exist")


# --- in process: the Retry-After cap and a shutdown during a POST -------------------------------


def forward_config(topics: AlertTopics, url: str, **kw: Any) -> ForwardConfig:
    return ForwardConfig(bootstrap=topics.bootstrap, topic=topics.topics.routing(TEAM), url=url,
                         group_id=f"fwd-{uuid.uuid4().hex[:8]}",
                         deadletter_topic=topics.topics.deadletter, backoff_base_s=0.01,
                         backoff_cap_s=0.05, session_timeout_ms=6000, **kw)


@pytest.mark.integration
async def test_retry_after_beyond_the_cap_waits_the_cap_not_the_header(
    alert_topics: AlertTopics, receiver: Receiver,
) -> None:
    await produce(alert_topics.bootstrap, alert_topics.topics.routing(TEAM),
                  [make_alert("ra-1", "lead-ra")], partition=0)
    receiver.script.append("429-hour")
    fwd = Forwarder(forward_config(alert_topics, receiver.url, retry_after_cap_s=1.0,
                                   max_alerts=1))
    # Without the cap the retry would come an hour later: the deadline fails the test.
    stats = await asyncio.wait_for(fwd.run(), timeout=60)
    assert (stats.delivered, stats.retries, receiver.accepted) == (1, 1, ["ra-1"])
    # The wait was the cap (1 s), not the 0.05 s backoff that ignores the header.
    gap = receiver.seen_at[1] - receiver.seen_at[0]
    assert 1.0 <= gap < 30, gap


@pytest.mark.integration
async def test_shutdown_during_a_post_commits_nothing_and_the_alert_is_resent(
    alert_topics: AlertTopics, receiver: Receiver,
) -> None:
    routing = alert_topics.topics.routing(TEAM)
    await produce(alert_topics.bootstrap, routing, [make_alert("sd-1", "lead-sd")], partition=0)
    receiver.script.append("hang")
    cfg = forward_config(alert_topics, receiver.url)
    stop = asyncio.Event()
    run = asyncio.create_task(Forwarder(cfg, stop).run())
    await wait_for(lambda: len(receiver.seen_at) == 1, 60, "the POST to start")
    stop.set()  # the webhook still has not answered
    stats = await asyncio.wait_for(run, timeout=15)
    assert (stats.delivered, stats.abandoned, receiver.accepted) == (0, 1, [])
    tp = TopicPartition(routing, 0)
    assert await committed(alert_topics.bootstrap, cfg.group_id, [tp]) == [None]
    # The next member of the group sends it again, with the same idempotency key.
    again = await asyncio.wait_for(Forwarder(replace(cfg, max_alerts=1)).run(), timeout=60)
    assert again.delivered == 1 and receiver.accepted == ["sd-1"]
    assert await committed(alert_topics.bootstrap, cfg.group_id, [tp]) == [1]


@pytest.mark.integration
async def test_slack_format_posts_a_readable_message_and_parks_what_is_not_an_alert(
    alert_topics: AlertTopics, receiver: Receiver,
) -> None:
    routing = alert_topics.topics.routing(TEAM)
    await produce(alert_topics.bootstrap, routing, [make_alert("sl-1", "lead-sl")], partition=0)
    p = AIOKafkaProducer(bootstrap_servers=alert_topics.bootstrap, acks="all")
    await p.start()
    try:
        await p.send_and_wait(routing, b"not json", key=b"x", partition=0)
    finally:
        await p.stop()
    fwd = Forwarder(forward_config(alert_topics, receiver.url, format="slack", max_alerts=2))
    stats = await asyncio.wait_for(fwd.run(), timeout=60)
    assert (stats.delivered, stats.parked, receiver.accepted) == (1, 1, ["sl-1"])
    body = receiver.bodies["sl-1"]
    assert body["text"].startswith("Hot lead for sales: lead-sl@example.com (VP Sales, Acme)")
    assert [b["type"] for b in body["blocks"]] == ["section", "section", "context"]
    [dl] = [orjson.loads(r.value) for r in await read_all(alert_topics.bootstrap,
                                                          alert_topics.topics.deadletter)]
    assert (dl["reason"], dl["source_topic"]) == ("not_an_alert", routing)
