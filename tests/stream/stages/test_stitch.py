"""The stitch stage: a visitor's events wait for its identify, then go to the lead's
partition of the leads topic, as the bytes they arrived in when unchanged."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.core.event import Event
from pipeline.metrics.registry import Metrics
from pipeline.stream.codec import decode_event, encode_event, unpack
from pipeline.stream.keys import partition_for
from pipeline.stream.stages.stitch import stitch
from tests.support.stages import DEST


def _lines(events: list[Event]) -> list[tuple[Event, bytes]]:
    return [(e, encode_event(e)) for e in events]


def test_visitor_events_wait_for_the_identify_and_then_go_to_the_leads_partition() -> None:
    page = Event("p1", "anon-1", "page", 1000, url="https://x.com/pricing", anonymous_id="anon-1")
    table: dict[str, Any] = {}
    out = stitch(_lines([page]), table.get, DEST, max_buffer=10)
    assert out.sends == ()  # buffered under the anonymousId, nothing to score yet
    assert set(out.writes) == {"anon-1"}
    table.update(out.writes)
    ident = Event("i1", "u1", "identify", 2000, anonymous_id="anon-1", user_id="u1",
                  traits={"email": "a@b.com"})
    known = Event("k1", "u1", "track", 3000, name="Email Opened", user_id="u1")
    given = _lines([ident, known])
    out = stitch(given, table.get, DEST, max_buffer=10)
    assert {(s.topic, s.key, s.partition) for s in out.sends} == {
        ("lf-leads", None, partition_for(b"u1", 4))}
    lines = [line for s in out.sends for line in unpack(s.value)]
    forwarded = [decode_event(line) for line in lines]
    assert {e.message_id for e in forwarded} == {"p1", "i1", "k1"}
    assert all(e.lead_id == "u1" for e in forwarded)
    # events that were not re-keyed travel as the bytes they came in
    assert given[1][1] in lines
    assert out.overflowed == 0


def test_an_overflowing_visitor_buffer_is_counted() -> None:
    pages = [Event(f"p{i}", "anon-1", "page", 1000 + i, anonymous_id="anon-1")
             for i in range(5)]
    out = stitch(_lines(pages), {}.get, DEST, max_buffer=3)
    assert out.overflowed == 2
    reg = CollectorRegistry()
    out.observe(Metrics(reg), 0.0)
    assert reg.get_sample_value("leadflow_visitor_overflow_total") == 2
