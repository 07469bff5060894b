"""`leadflow alerts tail` and `leadflow alerts ack` against the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from click.testing import Result
from typer.testing import CliRunner

from pipeline.alerts.tail import format_alert
from pipeline.cli.main import app
from pipeline.models.events import Track, decode, validate
from tests.support.alerts import OTHER_TEAM, TEAM, AlertTopics, make_alert, produce, read_all


async def run_cli(args: list[str], env: dict[str, str]) -> Result:
    """The CLI, in process, in a worker thread (it runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, args, env=env, catch_exceptions=False)


# --- pure formatting ---------------------------------------------------------------------------


def test_readable_line_has_the_fields_an_ae_needs() -> None:
    line = format_alert(make_alert("a-1", "lead-42")).plain
    for part in ("10:15:00", "sales", "instant", "lead-42", "lead-42@example.com", "owner alice",
                 "score 85", "demo_request +50 (1x)", "pricing_page +30 (3x)",
                 "SLA due 10:20:00 (300s)", "alert a-1"):
        assert part in line, (part, line)


def test_readable_line_tolerates_missing_fields_and_control_characters() -> None:
    line = format_alert({"alert_id": "x", "lead": {"company": "Evil\x1b[31mCo"}}).plain
    assert "\x1b" not in line
    assert "UNASSIGNED" in line and "no SLA" in line and "alert x" in line


def test_escalation_line() -> None:
    esc = {"alert_id": "a-9", "lead_id": "L9", "team": "sales", "from_owner": "alice",
           "to_owner": "bob", "breached_at": "2024-05-02T10:20:01Z",
           "reason": "not acknowledged within 300s"}
    assert format_alert(esc).plain.startswith("10:20:01  sales  ESCALATION  lead L9  alice -> bob")


# --- tail --------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_tail_from_start_json_prints_the_alerts_in_order(alert_topics: AlertTopics) -> None:
    ids = [f"alert-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    routing = alert_topics.topics.routing(TEAM)
    # One partition, so the order on the topic is the produce order.
    await produce(alert_topics.bootstrap, routing,
                  [make_alert(a, f"lead-{i}") for i, a in enumerate(ids)], partition=0)
    # A fourth alert for another team must not show up.
    await produce(alert_topics.bootstrap, alert_topics.topics.routing(OTHER_TEAM),
                  [make_alert("other-team", "lead-x", team=OTHER_TEAM)])

    result = await run_cli(
        ["alerts", "tail", "--team", TEAM, "--from-start", "--json", "--max", "3",
         "--timeout", "20"],
        alert_topics.env(),
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [orjson.loads(line)["alert_id"] for line in lines] == ids
    assert orjson.loads(lines[0]) == make_alert(ids[0], "lead-0")

    result = await run_cli(
        ["alerts", "tail", "--team", TEAM, "--team", OTHER_TEAM, "--from-start", "--max", "4",
         "--timeout", "20"],
        alert_topics.env(),
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    mine = [line for line in lines if f"  {TEAM}  " in line]
    assert [next(a for a in ids if a in line) for line in mine] == ids
    for i, line in enumerate(mine):
        assert f"lead-{i} " in line and "owner alice" in line
    assert any("other-team" in line and f"  {OTHER_TEAM}  " in line for line in lines)


@pytest.mark.integration
async def test_tail_default_shows_only_new_alerts(
    alert_topics: AlertTopics, monkeypatch: pytest.MonkeyPatch,
) -> None:
    routing = alert_topics.topics.routing(TEAM)
    await produce(alert_topics.bootstrap, routing, [make_alert("old-1", "lead-1")], partition=0)

    # The "new" alerts must come after the tail has read its end offsets, or they are old:
    # wait for that moment itself instead of guessing it with a sleep.
    positioned = threading.Event()
    end_offsets = AIOKafkaConsumer.end_offsets

    async def observed_end_offsets(self: AIOKafkaConsumer, *a: Any, **kw: Any) -> Any:
        ends = await end_offsets(self, *a, **kw)
        positioned.set()
        return ends

    monkeypatch.setattr(AIOKafkaConsumer, "end_offsets", observed_end_offsets)

    async def produce_later() -> None:
        assert await asyncio.to_thread(positioned.wait, 20), "tail never read its end offsets"
        await produce(alert_topics.bootstrap, routing, [make_alert("new-1", "lead-2")])
        await produce(alert_topics.bootstrap, alert_topics.topics.escalations, [{
            "alert_id": "new-1", "lead_id": "lead-2", "team": TEAM, "from_owner": "alice",
            "to_owner": "bob", "breached_at": "2024-05-02T10:20:01Z"}])

    later = asyncio.create_task(produce_later())
    result = await run_cli(
        ["alerts", "tail", "--team", TEAM, "--escalations", "--json", "--max", "2",
         "--timeout", "20"],
        alert_topics.env(),
    )
    await later
    assert result.exit_code == 0, result.output
    got = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(g["alert_id"], "from_owner" in g) for g in got] == [
        ("new-1", False), ("new-1", True)
    ]


@pytest.mark.integration
async def test_tail_stops_at_timeout_and_names_a_missing_topic(
    alert_topics: AlertTopics,
) -> None:
    result = await run_cli(["alerts", "tail", "--team", TEAM, "--timeout", "1"],
                           alert_topics.env())
    assert result.exit_code == 0 and result.stdout == ""
    result = await run_cli(["alerts", "tail", "--team", "nosuchteam", "--timeout", "1"],
                           alert_topics.env())
    assert result.exit_code == 1
    assert "routing.nosuchteam does not exist" in result.stderr


# --- ack ---------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_ack_finds_the_lead_and_sends_one_event(alert_topics: AlertTopics) -> None:
    t = alert_topics.topics
    target = f"alert-{uuid.uuid4().hex[:8]}"
    await produce(alert_topics.bootstrap, t.routing(TEAM),
                  [make_alert("a-other", "lead-other"), make_alert(target, "lead-77")])
    await produce(alert_topics.bootstrap, t.routing(OTHER_TEAM),
                  [make_alert("a-emea", "lead-emea", team=OTHER_TEAM)])

    result = await run_cli(["alerts", "ack", target, "--owner", "bob", "--timeout", "15"],
                           alert_topics.env())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"sent to {t.crm} [")

    records = await read_all(alert_topics.bootstrap, t.crm)
    assert len(records) == 1
    record = records[0]
    assert record.key == b"lead-77"
    event: dict[str, Any] = orjson.loads(record.value)
    assert event["type"] == "track" and event["event"] == "Alert Acknowledged"
    assert event["userId"] == "lead-77"
    assert event["properties"] == {"alert_id": target, "owner": "bob"}
    assert event["context"]["library"]["name"] == "leadflow-cli"
    assert str(uuid.UUID(event["messageId"])) == event["messageId"]
    assert event["timestamp"].endswith("Z")
    # The pipeline's own inbound validation accepts it.
    parsed = validate(decode(record.value))
    assert isinstance(parsed, Track) and parsed.user_id == "lead-77"
    # What it printed is what it sent.
    assert orjson.loads(result.stdout.split(": ", 1)[1]) == event


@pytest.mark.integration
async def test_ack_with_lead_skips_the_search_and_unknown_alert_fails(
    alert_topics: AlertTopics,
) -> None:
    t = alert_topics.topics
    await produce(alert_topics.bootstrap, t.routing(TEAM), [make_alert("a-1", "lead-1")])

    result = await run_cli(["alerts", "ack", "does-not-exist", "--timeout", "10"],
                           alert_topics.env())
    assert result.exit_code == 1
    assert result.stderr.startswith("error: alert does-not-exist not found")
    assert len(result.stderr.strip().splitlines()) == 1

    result = await run_cli(["alerts", "ack", "any-id", "--lead", "lead-9"], alert_topics.env())
    assert result.exit_code == 0, result.output
    events = [orjson.loads(r.value) for r in await read_all(alert_topics.bootstrap, t.crm)]
    assert [(e["userId"], e["properties"]) for e in events] == [
        ("lead-9", {"alert_id": "any-id"})
    ]


@pytest.mark.integration
async def test_tail_stops_cleanly_on_ctrl_c(alert_topics: AlertTopics, tmp_path: Path) -> None:
    await produce(alert_topics.bootstrap, alert_topics.topics.routing(TEAM),
                  [make_alert("a-1", "lead-1")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.cli.main", "alerts", "tail", "--team", TEAM,
        "--from-start", "--json",
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, **alert_topics.env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert orjson.loads(first)["alert_id"] == "a-1"
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert out == b"" and b"Traceback" not in err
