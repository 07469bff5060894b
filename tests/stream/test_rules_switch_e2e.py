"""Rules published while traffic flows: the worker switches with no restart, exactly.

One worker on the shipped rules (revision 0). A fixed event set from the simulator
trickles in; a third of the way, `leadflow rules publish` puts revision 1 on the rules
topic (the shipped rules with a revision: another version that scores the same, so the
crash test's checker still applies to every event whichever version scored it); two
thirds of the way, a broken file is refused by `publish`, then produced raw onto the topic
as revision 2. Checked:
- the same worker process runs throughout, and `/readyz` names revision 1 once published,
  still names it after the broken record, and names that record among its failures;
- stage changes carry version 0, then version 1 and never 0 again on each partition
  (switches happen between batches), and nothing else;
- nothing lost or scored twice: scores, events, stages, stage changes and alerts equal
  the pure core's (`tests/support/reliability.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.rules import load_default_rules, parse_rules
from pipeline.models.outputs import PublishedRules
from tests.support.published import revised
from tests.support.reliability import (
    alert_ids,
    events_per_lead,
    judge,
    make_isolated,
    messages,
    produce,
    read_all,
    reference,
    report,
    seen_order,
    settled,
)
from tests.support.workers import Isolated, WorkerProcess, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VISITORS = 300
SEED = 23
STEPS = 60
STEP_SECONDS = 0.3


async def publish(iso: Isolated, path: Path) -> tuple[int, str]:
    out = await asyncio.to_thread(
        CliRunner().invoke, app, ["rules", "publish", str(path)], env=iso.env)
    return out.exit_code, out.output


async def readyz(w: WorkerProcess) -> dict[str, Any]:
    try:
        _, body = await w.get("/readyz")
    except OSError:
        return {}
    return dict(body or {})


async def test_rules_published_under_traffic_switch_without_restart_and_lose_nothing(
    kafka_bootstrap: str, tmp_path: Path, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], capsys: pytest.CaptureFixture[str],
) -> None:
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home")
    v0 = load_default_rules().version
    one = tmp_path / "rules-1.yaml"
    one.write_text(revised(1))
    v1 = parse_rules(revised(1)).version
    broken_text = revised(2).replace("  hot: 90 ", "  hot: hot ", 1)
    broken = tmp_path / "rules-2.yaml"
    broken.write_text(broken_text)

    w = worker_factory(iso)
    await w.wait_ready()
    pid = w.proc.pid if w.proc else None
    assert (await readyz(w))["rules"]["version"] == v0

    msgs = messages(VISITORS, SEED)
    size = -(-len(msgs) // STEPS)
    steps = [msgs[i:i + size] for i in range(0, len(msgs), size)]
    published: asyncio.Task[tuple[int, str]] | None = None
    for i, step in enumerate(steps):
        await produce(producer, iso, step)
        if i == len(steps) // 3:  # while traffic flows
            published = asyncio.create_task(publish(iso, one))
        if i == 2 * len(steps) // 3:
            assert published is not None
            code, out = await published
            assert code == 0 and f"published rules version {v1} (revision 1)" in out, out
            await poll(lambda: readyz(w), lambda s: s.get("rules", {}).get("version") == v1, 60)
            code, out = await publish(iso, broken)
            assert code == 1 and "thresholds.hot" in out, out
            # forced past `publish`: workers must refuse it themselves
            forced = PublishedRules(rules_version="2-forced", revision=2, source=broken_text,
                                    file=broken.name, published_at=datetime.now(UTC))
            await producer.send_and_wait(iso.settings.topics.rules, forced.to_bytes(), key=b"2")
        await asyncio.sleep(STEP_SECONDS)

    state = await poll(lambda: readyz(w),
                       lambda s: (s.get("rules", {}).get("last_failure") or {}).get("revision")
                       is None and s.get("rules", {}).get("load_failures", 0) >= 1, 60)
    rules = state["rules"]
    assert (rules["version"], rules["revision"]) == (v1, 1), rules
    assert rules["last_failure"]["reason"] == "invalid"
    assert any("thresholds.hot" in p for p in rules["last_failure"]["problems"]), rules
    assert await w.metric("leadflow_rules_load_failures_total") == 1
    assert await w.metric("leadflow_rules_info") == 1

    docs = await settled(w, events_per_lead(msgs))
    assert w.proc is not None and w.proc.poll() is None and w.proc.pid == pid  # no restart
    order, _ = await seen_order(iso)
    ref = reference(msgs, order)
    recs = await read_all(iso.bootstrap, [iso.settings.topics.stage_changes])
    got, versions = [], {}
    for r in recs:
        d = orjson.loads(r.value)
        versions.setdefault(r.partition, []).append(d["rules_version"])
        if d.get("status", "applied") == "applied":
            got.append((d["lead_id"], d["from_stage"], d["to_stage"],
                        (d.get("cause") or {}).get("message_id")))
    v = judge(ref, docs, got, await alert_ids(iso))
    seen = [x for vs in versions.values() for x in vs]
    report(capsys, " ".join([
        f"rules-switch: events={len(msgs)} leads={len(ref.events)}",
        f"lost={len(v.lost) + len(v.alerts_lost)}",
        f"duplicated={v.duplicated + v.alerts_duplicated}",
        f"stage-changes: v0={seen.count(v0)} v1={seen.count(v1)}",
        f"other={len(seen) - seen.count(v0) - seen.count(v1)}",
    ]))
    assert set(seen) == {v0, v1}, set(seen)
    for part, vs in versions.items():  # v0 ... v0 v1 ... v1 on each partition
        assert vs == sorted(vs, key=lambda x: x == v1), (part, vs)
    assert not v.wrong_events, v.wrong_events[:5]
    assert not v.wrong_scores, v.wrong_scores[:5]
    assert not v.wrong_stage, v.wrong_stage[:5]
    assert not v.lost and not v.unexpected and v.duplicated == 0, (v.lost[:5], v.unexpected[:5])
    assert not v.alerts_lost and not v.alerts_unexpected and v.alerts_duplicated == 0


async def test_fit_follows_published_rules_on_the_next_event_and_engagement_stays(
    kafka_bootstrap: str, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path,
) -> None:
    """A lead's fit 15 (senior title) becomes 25 under rules that give the title 25, on
    its next event and not before; its engagement keeps what it earned."""
    # the reliability tests' clock and timers: no decay tick between the two looks
    isolated = await make_isolated(kafka_bootstrap, tmp_path / "home")
    w = worker_factory(isolated)
    await w.wait_ready()
    web = isolated.settings.topics.web
    v0 = load_default_rules().version

    async def send(mid: str, body: dict[str, Any]) -> None:
        msg = {"messageId": mid, "userId": "u-fit", "timestamp": "2026-01-05T10:00:00Z", **body}
        await producer.send_and_wait(web, orjson.dumps(msg), key=b"u-fit")

    async def doc(seen: int) -> dict[str, Any]:
        async def get() -> Any:
            return (await w.get("/leads/u-fit"))[1]
        return dict(await poll(get, lambda d: bool(d) and d.get("events_seen") == seen, 60))

    await send("f1", {"type": "identify", "traits": {"title": "VP Sales"}})
    await send("f2", {"type": "page", "properties": {"url": "https://x.example/pricing"}})
    before = await doc(2)
    assert (before["scores"]["fit"], before["fit_rules_version"]) == (15, v0)

    new_text = revised(1).replace("    points: 15\n", "    points: 25\n", 1)
    new = parse_rules(new_text)
    assert [r.points for r in new.traits if r.id == "senior_title"] == [25]
    path = tmp_path / "fit.yaml"
    path.write_text(new_text)
    code, out = await publish(isolated, path)
    assert code == 0, out
    await poll(lambda: readyz(w), lambda s: s.get("rules", {}).get("version") == new.version, 60)
    untouched = await doc(2)
    assert (untouched["scores"]["fit"], untouched["fit_rules_version"]) == (15, v0)

    await send("f3", {"type": "track", "event": "Email Opened"})
    after = await doc(3)
    assert (after["scores"]["fit"], after["fit_rules_version"]) == (25, new.version)
    assert after["scores"]["engagement"] >= before["scores"]["engagement"] > 0


async def test_a_worker_started_after_a_publish_runs_the_published_rules_from_its_first_event(
    kafka_bootstrap: str, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path,
) -> None:
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home")
    path = tmp_path / "rules-1.yaml"
    path.write_text(revised(1))
    v1 = parse_rules(revised(1)).version
    code, out = await publish(iso, path)
    assert code == 0, out
    msgs = messages(60, SEED)
    await produce(producer, iso, msgs)  # waiting on the topic before the worker starts
    w = worker_factory(iso)
    await w.wait_ready()
    await settled(w, events_per_lead(msgs))
    rules = (await readyz(w))["rules"]
    assert (rules["version"], rules["origin"]) == (v1, f"{iso.settings.topics.rules}[0]@0")
    recs = await read_all(iso.bootstrap, [iso.settings.topics.stage_changes])
    assert recs and {orjson.loads(r.value)["rules_version"] for r in recs} == {v1}
