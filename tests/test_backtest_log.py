"""`leadflow backtest --from-kafka`: the retained input topics give the same report as an
export of the same messages, records before `--since` are left out, and a broken record is
reported with its topic, partition and offset."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.backtest import backtest
from pipeline.core.rules import load_default_rules
from tests.support.backtest import messages
from tests.support.workers import REPO, Isolated

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


async def test_from_kafka_reports_what_an_export_of_the_same_messages_gives(
    isolated: Isolated, producer: AIOKafkaProducer, tmp_path: Path,
) -> None:
    t = isolated.settings.topics
    msgs = messages()
    crm = {"Lead Accepted", "Opportunity Created"}
    for m in msgs:  # web traffic on events.web, the CRM's calls on events.crm
        topic = t.crm if m.get("event") in crm else t.web
        await producer.send_and_wait(topic, orjson.dumps(m),
                                     key=str(m.get("userId") or m["anonymousId"]).encode())
    # two days old: outside --since 1d
    old = {"type": "track", "messageId": "old-1", "userId": "ada", "event": "Demo Requested",
           "timestamp": "2026-03-01T09:00:00.000Z"}
    await producer.send_and_wait(t.web, orjson.dumps(old), key=b"ada",
                                 timestamp_ms=int(time.time() * 1000) - 2 * DAY_MS)
    broken = await producer.send_and_wait(t.web, b'{"type": "track", "messageId"', key=b"x")

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "backtest", "--from-kafka", "--since",
         "1d", "--json"], env={**os.environ, **isolated.env}, cwd=REPO, capture_output=True,
        text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = orjson.loads(out.stdout)

    export = tmp_path / "export.jsonl"
    export.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n")
    want = backtest(export, load_default_rules())
    assert got["result"] == want["result"]
    assert got["input"]["events"] == len(msgs) == want["input"]["events"]
    assert got["input"]["lines"] == len(msgs) + 1  # records read: the old one is not
    [bad] = got["input"]["invalid_lines"]
    assert bad["reason"] == "bad_json"
    assert bad["where"] == f"{t.web}[{broken.partition}]@{broken.offset}"
    assert got["input"]["path"].startswith(f"kafka {isolated.bootstrap} ")


def test_from_kafka_refuses_a_file_too(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "backtest", "--from-kafka",
         str(tmp_path / "x.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "error: give a JSONL file or --from-kafka, not both" in out.stderr
