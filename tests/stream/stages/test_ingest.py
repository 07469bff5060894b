"""The ingest stage: validation, dead letters with reasons, envelopes to the identity topic."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from pipeline.metrics.registry import Metrics
from pipeline.stream.codec import decode_event, unpack
from pipeline.stream.keys import partition_for
from pipeline.stream.stages.ingest import failed, ingest, ingest_batch
from tests.support.stages import DEST, RULES, SOURCES, raw


def test_ingest_rejects_with_reasons_and_keeps_order() -> None:
    good = orjson.dumps({"type": "page", "messageId": "m1", "anonymousId": "a",
                         "timestamp": "2026-01-01T00:00:00Z"})
    res = ingest_batch([raw(0, b"{"), raw(1, good), raw(2, None), raw(3, b"x" * 70_000)],
                       SOURCES, max_bytes=65536, max_future_skew_ms=300_000)
    assert [e.message_id for e in res.events] == ["m1"]
    assert [(r.message.offset, r.reason) for r in res.rejected] == [
        (0, "bad_json"), (2, "empty"), (3, "oversize")]


def _page(mid: str, anon: str) -> bytes:
    return orjson.dumps({"type": "page", "messageId": mid, "anonymousId": anon,
                         "timestamp": "2026-01-01T00:00:00Z"})


def test_the_stage_sends_dead_letters_and_envelopes_on_the_partition_of_each_identity_key(
) -> None:
    msgs = [raw(0, b"{"), raw(1, _page("m1", "a1")), raw(2, _page("m2", "a2")),
            raw(3, _page("m3", "a1"), topic="events.crm")]
    out = ingest(msgs, SOURCES, DEST, max_bytes=65536, max_future_skew_ms=10**12)
    dead = [s for s in out.sends if s.topic == "events.deadletter"]
    assert [(s.key, orjson.loads(s.value)["reason"], s.partition) for s in dead] == [
        (b"k", "bad_json", None)]
    assert orjson.loads(dead[0].value)["rules_version"] == RULES.version
    env = [s for s in out.sends if s.topic == "lf-identity"]
    # every event in exactly one envelope, on the partition its identity key hashes to
    placed = {decode_event(line).message_id: s.partition for s in env
              for line in unpack(s.value)}
    assert placed == {"m1": partition_for(b"a1", 4), "m2": partition_for(b"a2", 4),
                      "m3": partition_for(b"a1", 4)}
    assert len(out.sends) == len(dead) + len(env)
    assert dict(out.events_in) == {("web", "page"): 2, ("crm", "page"): 1}
    reg = CollectorRegistry()
    out.observe(Metrics(reg), 0.0)
    assert reg.get_sample_value("leadflow_deadletters_total", {"reason": "bad_json"}) == 1
    assert reg.get_sample_value("leadflow_events_in_total",
                                {"source": "web", "type": "page"}) == 2


def test_a_failed_batch_becomes_one_dead_letter_per_message_naming_the_error() -> None:
    msgs = [raw(0, _page("m1", "a1")), raw(1, None)]
    out = failed(msgs, RuntimeError("store closed"), DEST)
    letters = [orjson.loads(s.value) for s in out.sends]
    assert {s.topic for s in out.sends} == {"events.deadletter"}
    assert [(d["reason"], d["offset"]) for d in letters] == [("internal", 0), ("internal", 1)]
    assert all("RuntimeError: store closed" in d["detail"] for d in letters)
    reg = CollectorRegistry()
    out.observe(Metrics(reg), 0.0)
    assert reg.get_sample_value("leadflow_deadletters_total", {"reason": "internal"}) == 2


def _cost(mid: str, **props: object) -> bytes:
    return orjson.dumps({"type": "track", "event": "Campaign Cost", "messageId": mid,
                         "userId": "marketing-ops", "timestamp": "2026-01-01T00:00:00Z",
                         "properties": props})


def test_campaign_costs_are_counted_by_channel_never_scored_and_bad_ones_dead_lettered(
) -> None:
    msgs = [raw(0, _cost("c1", channel="paid_search", campaign="q4", amount=1200.5,
                         currency="usd")),
            raw(1, _cost("c2", channel="Paid_Search ", amount="300")),
            raw(2, _cost("c3", channel="billboards", amount=50)),  # not a channel of the rules
            raw(3, _cost("c4", channel="email", amount="a lot")),
            raw(4, _cost("c5", amount=10)),
            raw(5, _cost("c6", channel="email", amount=-1)),
            raw(6, _cost("c7", channel="email"))]
    out = ingest(msgs, SOURCES, DEST, max_bytes=65536, max_future_skew_ms=10**12)
    assert [(c.channel, c.campaign, c.amount, c.currency) for c in out.costs] == [
        ("paid_search", "q4", 1200.5, "USD"), ("paid_search", None, 300.0, None),
        ("billboards", None, 50.0, None)]
    # not a lead's activity: nothing goes on to the identity topic
    assert [s for s in out.sends if s.topic == "lf-identity"] == []
    dead = {orjson.loads(s.value)["offset"]: orjson.loads(s.value) for s in out.sends
            if s.topic == "events.deadletter"}
    assert {k: v["reason"] for k, v in dead.items()} == {
        3: "bad_campaign_cost", 4: "bad_campaign_cost", 5: "bad_campaign_cost",
        6: "bad_campaign_cost"}
    assert "properties.amount 'a lot': not_a_number" in dead[3]["detail"]
    assert "needs properties.channel" in dead[4]["detail"]
    assert "properties.amount -1: negative" in dead[5]["detail"]
    assert "properties.amount is missing" in dead[6]["detail"]
    reg = CollectorRegistry()
    out.observe(Metrics(reg, channels=["paid_search", "email"]), 0.0)
    cost = "leadflow_campaign_cost_total"
    assert reg.get_sample_value(cost, {"channel": "paid_search"}) == 1500.5
    assert reg.get_sample_value(cost, {"channel": "other"}) == 50
    assert reg.get_sample_value(cost, {"channel": "email"}) == 0
    assert reg.get_sample_value("leadflow_deadletters_total",
                                {"reason": "bad_campaign_cost"}) == 4
    assert reg.get_sample_value("leadflow_events_in_total",
                                {"source": "web", "type": "track"}) == 3
