"""The unmodified npm @segment/analytics-node SDK sends a batch mixing valid and invalid
items to the collector: the valid ones land on Kafka, the invalid one is dead-lettered, and
the SDK sees no error (a 400 would have made it drop the whole batch)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.models.events import parse_message
from tests.support.collector import MakeServer, consume, count

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NODE_DIR = Path(__file__).parent / "node"
SEND = NODE_DIR / "send.mjs"
#: Lowered so that an item the SDK still accepts (its own limit is 32 KB) is too big here.
MAX_MESSAGE_BYTES = 4096
OVERSIZE = 8000


def _node() -> str:
    """The node binary; a missing toolchain fails the test (CI installs it), never skips."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js >= 20 to run the analytics-node test")
    if not (NODE_DIR / "node_modules" / "@segment" / "analytics-node").is_dir():
        pytest.fail(f"@segment/analytics-node is not installed: run "
                    f"`npm ci --prefix {NODE_DIR}` (.ci/test does)")
    return node


def _run_sdk(url: str, write_key: str) -> dict[str, Any]:
    """Runs in a thread: the collector answers on this test's event loop meanwhile."""
    proc = subprocess.run([_node(), str(SEND), url, write_key, str(OVERSIZE)], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"send.mjs failed ({proc.returncode}): {proc.stderr}"
    report: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return report


async def test_analytics_node_mixed_batch_loses_nothing(make_server: MakeServer) -> None:
    srv = await make_server(collector_max_message_bytes=MAX_MESSAGE_BYTES)
    report = await asyncio.to_thread(_run_sdk, srv.url, "web-key")

    # The SDK sent one request, got a 2xx and reported no failed delivery.
    assert report["errors"] == []
    assert [r["status"] for r in report["responses"]] == [200]
    [request] = report["requests"]
    assert request["url"] == f"{srv.url}/v1/batch"
    sent = request["body"]["batch"]
    assert len(sent) == 5
    [bad_index] = [i for i, m in enumerate(sent) if m.get("event") == "Form Submitted"]

    got = [v for _, v in await consume(srv.bootstrap, srv.topics.web, 4)]
    assert await count(srv.bootstrap, srv.topics.web) == 4  # nothing else, the bad one neither
    assert [(v["type"], v.get("event")) for v in got] == [
        ("identify", None), ("page", None), ("screen", None), ("track", "Demo Requested")]
    assert {v["context"]["library"]["name"] for v in got} == {"@segment/analytics-node"}
    assert all("writeKey" not in v for v in got)  # the SDK puts it in the body too

    now = int(time.time() * 1000)
    events = [parse_message(orjson.dumps(v), source="web", now_ms=now) for v in got]
    assert {e.lead_id for e in events} == {"lin@acme.example"}
    assert events[0].traits["title"] == "Head of Sales"
    screen = events[2]
    assert (screen.type, screen.name) == ("screen", "Dashboard")

    [dl] = [v for _, v in await consume(srv.bootstrap, srv.topics.deadletter, 1)]
    assert await count(srv.bootstrap, srv.topics.deadletter) == 1
    assert (dl["origin"], dl["batch_index"], dl["reason"]) == ("collector", bad_index, "oversize")
    assert dl["rules_version"] is None  # the collector validates; it holds no rules
    assert str(MAX_MESSAGE_BYTES) in dl["detail"]
    kept = orjson.loads(base64.b64decode(dl["value_b64"]))
    assert kept["event"] == "Form Submitted" and len(kept["properties"]["blob"]) == OVERSIZE
    assert kept["messageId"] == sent[bad_index]["messageId"]  # a replay can be deduplicated
