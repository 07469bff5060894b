"""`leadflow deadletters` against the real broker and a real worker: refuse, relax, replay."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.backtest import run
from pipeline.core.engine import scores
from pipeline.core.rules import load_default_rules
from pipeline.deadletters.replay import Stored, parse_offsets, read_all, select
from pipeline.models.events import parse_message
from pipeline.models.outputs import DeadLetter
from pipeline.models.timefmt import parse_time
from tests.support.workers import REPO, Isolated, WorkerProcess, consume, make_isolated

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEAD = "u-replay"


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _messages() -> list[dict[str, Any]]:
    """A lead's events; two are padded past a 2 KB limit, one of those is also invalid."""
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    pad = {"pad": "x" * 3000}

    def ts(i: int) -> str:
        return _iso(t0 + timedelta(seconds=i))

    def page(i: int, path: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"type": "page", "messageId": f"{LEAD}-{i}", "userId": LEAD, "timestamp": ts(i),
                "name": path, "properties": {"url": f"https://acme.example{path}", "path": path,
                                             **(extra or {})}}

    return [
        {"type": "identify", "messageId": f"{LEAD}-0", "userId": LEAD, "timestamp": ts(0),
         "traits": {"email": "ada@acme-corp.example", "title": "VP Sales"}},
        page(1, "/pricing"),
        page(2, "/compare", pad),  # oversize at 2 KB, valid once the limit is relaxed
        page(3, "/blog/why"),
        # oversize, and a track without an event name: it fails again after the replay
        {"type": "track", "messageId": f"{LEAD}-4", "userId": LEAD, "timestamp": ts(4),
         "properties": pad},
    ]


def _cli(iso: Isolated, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "deadletters", *args],
        env={**os.environ, **iso.env}, cwd=REPO, capture_output=True, text=True, timeout=120)


async def _lead(worker: WorkerProcess, until: Callable[[dict[str, Any]], bool],
                timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: Any = None
    while time.monotonic() < deadline:
        status, doc = await worker.get(f"/leads/{LEAD}")
        if status == 200 and until(doc):
            return dict(doc)
        await asyncio.sleep(0.3)
    raise AssertionError(f"lead not as expected: {doc}\n{worker.tail()}")


async def _letters(iso: Isolated, n: int) -> list[dict[str, Any]]:
    got = await consume(iso.bootstrap, [iso.settings.topics.deadletter],
                        until=lambda o: len(o) >= n)
    assert len(got) == n, got
    return [d for _, _, d in got]


async def test_replay_after_relaxing_a_limit_scores_as_if_never_refused(
    kafka_bootstrap: str, tmp_path: Path, worker_factory: Callable[..., WorkerProcess],
    producer: AIOKafkaProducer,
) -> None:
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home",
                              extra_env={"LEADFLOW_MAX_MESSAGE_BYTES": "2048"})
    t = iso.settings.topics
    worker = worker_factory(iso)
    await worker.wait_ready()
    msgs = _messages()
    for m in msgs:
        await producer.send_and_wait(t.web, orjson.dumps(m), key=LEAD.encode())
    dls = await _letters(iso, 2)
    assert [d["reason"] for d in dls] == ["oversize", "oversize"]
    assert {d["rules_version"] for d in dls} == {load_default_rules().version}
    before = await _lead(worker, lambda d: d["events_seen"] == 3)

    listed = _cli(iso, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = orjson.loads(listed.stdout)
    assert doc["total"] == 2
    assert [(g["reason"], g["source_topic"], g["count"]) for g in doc["groups"]] == [
        ("oversize", t.web, 2)]
    first = doc["newest"][-1]["position"]
    shown = _cli(iso, "show", first)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["value"]["messageId"] in {f"{LEAD}-2", f"{LEAD}-4"}

    # relax the limit (a restart with the new setting), then replay
    assert worker.stop() == 0
    iso.env["LEADFLOW_MAX_MESSAGE_BYTES"] = str(64 * 1024)
    worker = worker_factory(iso)
    await worker.wait_ready()
    out = _cli(iso, "replay", "--reason", "oversize", "--since", "1h")
    assert out.returncode == 0, out.stderr
    assert "2 produced (2 to " + t.web in out.stdout
    assert "/2 produced" in out.stderr  # progress
    replay_id = out.stdout.split()[1].rstrip(":")

    # the valid one is scored; the invalid one is a dead letter again, naming the replay
    after = await _lead(worker, lambda d: d["events_seen"] == 4)
    dls = await _letters(iso, 3)
    again = DeadLetter.model_validate(dls[-1])
    assert (again.reason, again.replay_id) == ("invalid", replay_id)
    [original] = [x for x in await read_all(iso.bootstrap, t.deadletter)
                  if x.letter.replay_id is None and x.letter.value_size > 3000
                  and b'"messageId":"u-replay-4"' in base64.b64decode(x.letter.value_b64)]
    assert again.replay_of == original.where
    assert orjson.loads(base64.b64decode(again.value_b64))["messageId"] == f"{LEAD}-4"

    # the score is what the pure core gives for the valid events, as if none was refused
    rules = load_default_rules()
    now = int(time.time() * 1000)
    events = [parse_message(orjson.dumps(m), source="web", now_ms=now) for m in msgs[:4]]
    state = run(events, rules).states[LEAD]
    expected = scores(state, rules)
    assert after["scores"]["total"] == pytest.approx(expected["total"])
    assert after["scores"]["total"] > before["scores"]["total"]  # the comparison page counted

    # a second replay: the refused-again message is left alone, the other is a duplicate
    out2 = _cli(iso, "replay")
    assert out2.returncode == 0, out2.stderr
    assert "1 produced" in out2.stdout and "2 skipped: they failed again" in out2.stdout
    # a sentinel after it on the same partition: once it is scored, the replay was read
    sentinel = {"type": "track", "messageId": f"{LEAD}-sentinel", "userId": LEAD,
                "timestamp": _iso(datetime.now(UTC)), "event": "Sentinel Ping"}
    await producer.send_and_wait(t.web, orjson.dumps(sentinel), key=LEAD.encode())
    final = await _lead(worker, lambda d: d["events_seen"] >= 5)
    assert final["events_seen"] == 5
    assert final["scores"] == after["scores"]
    assert len(await _letters(iso, 3)) == 3  # nothing new was refused
    listed = orjson.loads(_cli(iso, "list", "--json").stdout)
    # the retry (invalid) and the original it replayed (oversize) count as failed after replay
    assert {g["reason"]: (g["count"], g["failed_after_replay"]) for g in listed["groups"]} == {
        "invalid": (1, 1), "oversize": (2, 1)}


def _stored(p: int, o: int, **kw: Any) -> Stored:
    base: dict[str, Any] = dict(
        reason="oversize", detail="d", source_topic="events.web", partition=0, offset=o,
        timestamp_ms=0, key_b64=None, value_b64=f"v{o}", value_size=2,
        received_at=datetime(2026, 12, 1, 12, tzinfo=UTC) + timedelta(minutes=o))
    return Stored(p, o, DeadLetter(**{**base, **kw}))


def test_select_filters_and_skips_what_failed_after_a_replay() -> None:
    letters = [
        _stored(0, 0), _stored(0, 1, reason="invalid"), _stored(1, 2, source_topic="events.crm"),
        _stored(0, 3, value_b64="v0"),  # the same message as 0:0, dead-lettered twice
        _stored(0, 4, replay_id="r-1", replay_of="0:1", reason="invalid"),
    ]
    assert [s.where for s in select(letters).chosen] == ["1:2", "0:3"]
    sel = select(letters)
    assert sel.duplicates == 1 and [s.where for s in sel.failed_after_replay] == ["0:4", "0:1"]
    assert [s.where for s in select(letters, force=True).chosen] == ["1:2", "0:1", "0:3", "0:4"]
    assert [s.where for s in select(letters, reasons=["oversize"],
                                    source_topics=["events.web"]).chosen] == ["0:3"]
    t = datetime(2026, 12, 1, 12, 2, tzinfo=UTC)
    assert [s.where for s in select(letters, since=t).chosen] == ["1:2", "0:3"]
    assert [s.where for s in select(letters, until=t).chosen] == ["0:0"]
    assert [s.where for s in select(letters, offsets={(1, 2)}).chosen] == ["1:2"]


def test_parse_offsets_and_times() -> None:
    assert parse_offsets("0:3, 1:5-7") == {(0, 3), (1, 5), (1, 6), (1, 7)}
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("2026-12-01T10:00:00", now) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    from pipeline.deadletters.replay import DeadLetterError

    with pytest.raises(DeadLetterError, match="PARTITION:OFFSET"):
        parse_offsets("3")
    from pipeline.models.timefmt import TimeSpecError

    with pytest.raises(TimeSpecError, match="age"):
        parse_time("yesterday", now)
