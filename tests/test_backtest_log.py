"""`leadflow backtest --from-kafka`: the retained input topics give the same report as an
export of the same messages, records before `--since` are left out, and a broken record is
reported with its topic, partition and offset."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.backtest import backtest, run
from pipeline.backtest_log import read_inputs
from pipeline.core.breakdown import breakdown
from pipeline.core.rules import load_default_rules
from pipeline.models.timefmt import iso_z
from tests.support.backtest import messages
from tests.support.workers import REPO, Isolated, WorkerProcess, make_isolated, poll

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


async def test_from_kafka_agrees_with_the_stream_lead_by_lead(
    kafka_bootstrap: str, tmp_path: Path, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    # The decay timer stays out of it: the backtest ticks to the log's last event, the
    # stream's timer to the wall clock, months after these events.
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home",
                              extra_env={"LEADFLOW_DECAY_CHECK_INTERVAL_S": "36000"})
    worker = worker_factory(iso)
    await worker.wait_ready()
    t = iso.settings.topics
    crm = {"Lead Accepted", "Opportunity Created"}
    ada_sent = 0
    for m in messages():
        topic = t.crm if m.get("event") in crm else t.web
        if topic == t.crm:
            # Kafka orders a key's records within one topic only: the CRM's call must find
            # the lead as far as its web events took it, as it would in life.
            await poll(lambda: worker.get("/leads/ada"),
                       lambda r, n=ada_sent: r[0] == 200 and r[1]["events_seen"] == n,
                       timeout=60)
        await producer.send_and_wait(topic, orjson.dumps(m),
                                     key=str(m.get("userId") or m["anonymousId"]).encode())
        ada_sent += m.get("userId") == "ada" or m.get("anonymousId") == "anon-ada"

    loaded = await read_inputs(iso.bootstrap, {t.web: "web", t.crm: "crm"}, since_ms=0)
    rules = load_default_rules()
    offline = run(loaded.events, rules)
    per_lead = Counter(e.lead_id for e in loaded.events)
    assert set(offline.states) == {"ada", "anon:anon-bob"} == set(per_lead)
    # A visitor never identified has no lead record in the stream (its events wait in the
    # identity table for an identify); the backtest shows it as a visitor, unscored stages.
    assert offline.states["anon:anon-bob"].stage == "visitor"
    for lead, state in offline.states.items():
        if lead.startswith("anon:"):
            assert (await worker.get(f"/leads/{lead}"))[0] == 404
            continue
        _, doc = await poll(
            lambda lead=lead: worker.get(f"/leads/{lead}"),
            lambda r, lead=lead: r[0] == 200 and r[1]["events_seen"] == per_lead[lead],
            timeout=60)
        want = breakdown(state, rules)
        assert (doc["stage"], doc["hot"]) == (want["stage"], want["hot"]), (lead, doc)
        assert doc["scores"] == {"total": want["score_total"], **want["scores_by_group"]}
    # the story ends with ada at an opportunity: the comparison covers a full journey
    assert offline.states["ada"].stage == "opportunity"


async def test_a_since_before_what_the_topics_still_hold_is_refused_with_the_oldest_time(
    isolated: Isolated, producer: AIOKafkaProducer,
) -> None:
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    t = isolated.settings.topics
    now = int(time.time() * 1000)
    sent = []
    for i, age_days in enumerate((5, 3, 1)):
        m = {"type": "track", "messageId": f"r-{i}", "userId": "ada", "event": "Pricing",
             "timestamp": "2026-03-01T09:00:00.000Z"}
        sent.append(await producer.send_and_wait(t.web, orjson.dumps(m), key=b"ada",
                                                 partition=0,
                                                 timestamp_ms=now - age_days * DAY_MS))
    # What retention does to old segments: the first record (5 days old) is gone.
    admin = AIOKafkaAdminClient(bootstrap_servers=isolated.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(t.web, 0): RecordsToDelete(
            before_offset=sent[1].offset)})
    finally:
        await admin.close()

    def backtest_since(since: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli.main", "backtest", "--from-kafka", "--since",
             since, "--json"], env={**os.environ, **isolated.env}, cwd=REPO,
            capture_output=True, text=True, timeout=120)

    out = backtest_since("4d")
    assert out.returncode == 1, out.stdout
    oldest = iso_z(now - 3 * DAY_MS)
    assert f"reaches before what {t.web}[0] still holds: its oldest record is from " \
        f"{oldest}" in out.stderr, out.stderr
    assert f"ask for --since {oldest} or later" in out.stderr
    # Within what is held: the two records that remain are read.
    ok = backtest_since("2d")
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(ok.stdout)["input"]["lines"] == 1


def test_from_kafka_refuses_a_file_too(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "backtest", "--from-kafka",
         str(tmp_path / "x.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "error: give a JSONL file or --from-kafka, not both" in out.stderr
