"""Shared inputs of the stage tests: raw messages, the default rules, a small routing."""

from __future__ import annotations

from typing import Any

from pipeline.core.routing import RoutingRules
from pipeline.core.rules import load_default_rules
from pipeline.settings import Topics
from pipeline.stream.codec import AlertCommand
from pipeline.stream.stages.ingest import ingest_batch
from pipeline.stream.stages.records import Destinations, RawMessage
from pipeline.stream.stages.score import score_batch
from pipeline.stream.stages.stitch import stitch_batch

RULES = load_default_rules()
SOURCES = {"events.web": "web", "events.email": "email", "events.product": "product",
           "events.crm": "crm"}
TOPIC = {v: k for k, v in SOURCES.items()}
#: The default topics of an app "lf" with 4 partitions.
DEST = Destinations.of(Topics(), "lf", 4, RULES.version)


def raw(i: int, value: bytes | None, topic: str = "events.web") -> RawMessage:
    return RawMessage(topic=topic, partition=0, offset=i, timestamp_ms=1_767_225_600_000 + i,
                      key=b"k", value=value)


def run_pipeline(messages: list[RawMessage], batch: int) -> tuple[list[Any], dict[str, Any]]:
    """Ingest -> stitch -> score in batches of `batch`, with dict tables."""
    identity: dict[str, Any] = {}
    leads: dict[str, Any] = {}
    outputs: list[Any] = []
    for i in range(0, len(messages), batch):
        ing = ingest_batch(messages[i:i + batch], SOURCES, max_bytes=65536,
                           max_future_skew_ms=10**12)
        st = stitch_batch(ing.events, identity.get)
        identity.update(st.writes)
        sc = score_batch(st.forward, leads.get, RULES, dedup_retention_ms=7 * 86_400_000)
        leads.update(sc.writes)
        outputs.extend(sc.outputs)
    return outputs, leads


ROUTING = RoutingRules.model_validate({
    "sla": {"instant": "5m"},
    "teams": [{"name": "sales", "reps": [{"id": "r1", "capacity": 2}, {"id": "r2"}]}],
})


def alert(i: int, at: int) -> AlertCommand:
    return AlertCommand({"alert_id": f"a{i}", "lead_id": f"u{i}", "kind": "instant",
                         "triggered_ms": at, "domain": None})
