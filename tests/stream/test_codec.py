"""The internal topics' codec: events (with their origin) and the score stage's typed
control lines."""

from __future__ import annotations

from types import MappingProxyType

import orjson
import pytest

from pipeline.core.event import Event
from pipeline.stream.codec import (
    CONTROL_PREFIXES,
    AckCommand,
    AlertCommand,
    AssignCommand,
    OwnerUpdate,
    SlaTick,
    TickRequest,
    decode_assign,
    decode_event,
    decode_leads_line,
    encode_assign,
    encode_event,
    encode_owner,
    encode_tick,
    may_hold,
    stage_marks,
)


def test_every_leads_line_decodes_to_its_typed_record() -> None:
    e = Event("m1", "u1", "page", 1000, url="https://x.com", user_id="u1")
    own = OwnerUpdate("u1", "r1", "sales", "a1")
    req = TickRequest("u1", 5000)
    assert decode_leads_line(encode_event(e), None) == e
    assert decode_leads_line(encode_owner(own), None) == own
    assert decode_leads_line(encode_tick(req), None) == req
    assert encode_owner(own).startswith(CONTROL_PREFIXES)
    assert encode_tick(req).startswith(CONTROL_PREFIXES)
    assert not encode_event(e).startswith(CONTROL_PREFIXES)


def test_event_round_trips_with_its_origin() -> None:
    e = Event("m1", "u1", "page", 1_000, name="Pricing", source="web",
              properties=MappingProxyType({"path": "/pricing"}),
              url="https://a.io/pricing?utm_medium=cpc",
              utm=MappingProxyType({"source": "google", "medium": "cpc"}),
              anonymous_id="a1", user_id="u1", referrer="https://www.google.com/")
    assert decode_event(encode_event(e)) == e
    bare = Event("m2", "u1", "track", 2_000, name="Demo Requested")
    assert decode_event(encode_event(bare)) == bare
    assert b'"r"' not in encode_event(bare)  # no referrer: no key on the wire


def test_a_keyed_tick_of_an_older_version_names_its_lead_by_the_record_key() -> None:
    line = orjson.dumps({"tick": 7})
    assert decode_leads_line(line, b"u9") == TickRequest("u9", 7)
    with pytest.raises(ValueError, match="no lead and no record key"):
        decode_leads_line(line, None)


def test_the_decay_prefilter_only_rules_out_records_that_cannot_match() -> None:
    marks = stage_marks({"mql", "sql"})
    assert may_hold(orjson.dumps({"s": {"stage": "mql", "hot": False}}), marks)
    assert may_hold(orjson.dumps({"s": {"stage": "lead", "hot": True}}), marks)
    assert not may_hold(orjson.dumps({"s": {"stage": "lead", "hot": False}}), marks)


@pytest.mark.parametrize("cmd", [
    AlertCommand({"alert_id": "a1", "lead_id": "u1", "kind": "instant"}, routed_ms=42),
    AlertCommand({"alert_id": "a1", "lead_id": "u1", "kind": "instant"}),
    AckCommand("u1", "a1", 1_000, "Alert Acknowledged"),
    AckCommand("u1", None, 1_000),
    SlaTick(301_000),
])
def test_assign_commands_round_trip(cmd: AssignCommand) -> None:
    assert decode_assign(encode_assign(cmd)) == cmd


def test_an_assign_record_of_the_untyped_form_still_decodes() -> None:
    # records written before the commands were typed, still on the topic after an upgrade
    raw = b'{"op":"ack","lead_id":"u1","alert_id":7,"at_ms":5,"event":"Lead Contacted"}'
    assert decode_assign(raw) == AckCommand("u1", None, 5, "Lead Contacted")
    assert decode_assign(b'{"op":"alert","alert":{"alert_id":"a"}}') == \
        AlertCommand({"alert_id": "a"}, None)


@pytest.mark.parametrize(("raw", "says"), [
    (b"not json", "not JSON"),
    (b"[1]", "a JSON list, not an object"),
    (b'{"op":"merge"}', "unknown op 'merge' (expected alert, ack or tick)"),
    (b'{"op":"tick"}', "'tick' has no 'now_ms'"),
    (b'{"op":"ack","lead_id":"u1","at_ms":"soon"}', "assign command 'ack': invalid literal"),
    (b'{"op":"alert","alert":3}', "`alert` is missing or not an object"),
])
def test_a_bad_assign_record_is_refused_with_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(ValueError, match="assign command") as err:
        decode_assign(raw)
    assert says in str(err.value)
