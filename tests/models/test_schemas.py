"""schemas/*.json match the models, and real messages of every kind validate against them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from pipeline.models import schemagen
from pipeline.models.events import parse_message
from pipeline.models.outputs import (
    OUTBOUND,
    DeadLetter,
    Escalation,
    RoutingAlert,
    StageChange,
    TopReason,
)
from tests.support.schemas import SCHEMAS, check

AT = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
AT_MS = int(AT.timestamp() * 1000)


# -- drift -------------------------------------------------------------------------------


def test_schema_files_match_the_models() -> None:
    generated = schemagen.generate()
    on_disk = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert on_disk == sorted(generated), "schemas/ has files the models do not generate"
    drift = [n for n, s in generated.items() if (SCHEMAS / n).read_text() != schemagen.render(s)]
    assert drift == [], f"run `python -m pipeline.models.schemagen`; drifted: {drift}"


def test_check_mode_names_drifted_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemagen.main(["--dir", str(tmp_path)]) == 0
    assert schemagen.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "escalation.json").write_text("{}\n")
    (tmp_path / "segment-page.json").unlink()
    assert schemagen.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "escalation.json" in err and "segment-page.json" in err
    assert "stage-change.json" not in err


def test_asyncapi_references_existing_schema_files() -> None:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    assert str(doc["asyncapi"]).startswith(("2.6", "3.0"))
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("./"):
                refs.add(ref[2:].split("#")[0])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs == {p.name for p in SCHEMAS.glob("*.json")}
    assert {m.SCHEMA_FILE for m in OUTBOUND} <= refs
    assert all((SCHEMAS / r).exists() for r in refs)


# -- outbound examples --------------------------------------------------------------------


def stage_change(**kw: Any) -> StageChange:
    base: dict[str, Any] = dict(
        lead_id="u-42", from_stage="lead", to_stage="mql", status="applied", at=AT, at_ms=AT_MS,
        cause={"rule": "mql_threshold", "message_id": "m-1", "event_name": "Pricing Viewed"},
        scores={"total": 61.5, "fit": 20, "engagement": 36.5, "product": 5},
    )
    return StageChange(**{**base, **kw})


def routing_alert(**kw: Any) -> RoutingAlert:
    base: dict[str, Any] = dict(
        alert_id="u-42:instant:demo_request:m-9", lead_id="u-42", team="enterprise",
        kind="instant", temperature="hot", owner="rep-ana",
        assignment={"reason": "territory round robin", "skipped": ["rep-bo"], "excluded": []},
        triggered_at=AT, triggered_ms=AT_MS, sla_seconds=300,
        due_at=datetime(2024, 5, 6, 12, 5, tzinfo=UTC),
        trigger={"rule": "demo_request", "message_id": "m-9", "event_name": "Demo Requested"},
        scores={"total": 95, "fit": 30, "engagement": 60, "product": 5},
        top_reasons=[TopReason.parse("demo_request +40 (1x)"),
                     TopReason.parse("title_vp +10 (fit)")],
        lead={"email": "ada@acme.example", "email_domain": "acme.example", "name": "Ada L",
              "title": "VP Engineering", "company": "Acme", "country": "DE", "employees": 250},
    )
    return RoutingAlert(**{**base, **kw})


def test_stage_change_applied_and_refused_validate() -> None:
    applied = stage_change()
    check("stage-change.json", applied.to_bytes())
    assert orjson.loads(applied.to_bytes())["at"] == "2024-05-06T12:00:00Z"
    refused = stage_change(status="refused", to_stage="customer", reason="lead -> customer "
                           "is not an allowed move", scores=None, cause={"rule": "crm:Deal Won"})
    check("stage-change.json", refused.to_bytes())
    assert orjson.loads(refused.to_bytes())["cause"] == {
        "rule": "crm:Deal Won", "message_id": None, "event_name": None}


def test_routing_alerts_validate() -> None:
    hot = routing_alert()
    check("routing-alert.json", hot.to_bytes())
    body = orjson.loads(hot.to_bytes())
    assert body["top_reasons"][1] == {"rule": "title_vp", "points": 10.0, "count": None}
    assert body["schema_version"] == 1
    nurture = routing_alert(alert_id="u-42:nurture:m-3", team="nurture", kind="nurture",
                            temperature="warm", owner=None, assignment=None, sla_seconds=None,
                            due_at=None, top_reasons=[], lead={})
    check("routing-alert.json", nurture.to_bytes())


def test_escalation_validates_with_the_stream_shape() -> None:
    # The dict the assign stage builds (pipeline/stream/stages/assign.py) goes through the model.
    esc = Escalation(
        alert_id="a-1", lead_id="u-42", team="enterprise", kind="instant", from_owner="rep-ana",
        to_owner="rep-bo", sla_seconds=300, triggered_at="2024-05-06T12:00:00.000+00:00",
        breached_at="2024-05-06T12:05:01.000+00:00", reason="not acknowledged within 300s",
    )
    check("escalation.json", esc.to_bytes())


def test_dead_letter_validates_and_keeps_original_bytes() -> None:
    original = b'{"type":"track",\xff'
    dl = DeadLetter(
        reason="bad_encoding", detail="not valid UTF-8 JSON", source_topic="events.web",
        partition=3, offset=1234, timestamp_ms=AT_MS, key_b64=base64.b64encode(b"u-42").decode(),
        value_b64=base64.b64encode(original).decode(), value_size=len(original), received_at=AT,
    )
    check("dead-letter.json", dl.to_bytes())
    assert base64.b64decode(orjson.loads(dl.to_bytes())["value_b64"]) == original


def test_published_rules_validate_and_carry_the_text() -> None:
    from pipeline.core.rules import default_rules_text, load_default_rules
    from pipeline.published_rules import message

    text = default_rules_text()
    msg = message(load_default_rules(), text, "default.yaml", now=AT)
    check("published-rules.json", msg.to_bytes())
    wire = orjson.loads(msg.to_bytes())
    assert (wire["source"], wire["revision"], wire["rules_version"]) == (
        text, 0, load_default_rules().version)
    bad = {**wire, "revision": -1}
    with pytest.raises(jsonschema.ValidationError):
        check("published-rules.json", orjson.dumps(bad))


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("stage-change.json", {"status": "maybe"}),
        ("stage-change.json", {"surprise": 1}),
        ("routing-alert.json", {"kind": "lukewarm"}),
        ("routing-alert.json", {"lead_id": None}),
    ],
)
def test_schema_files_reject_bad_messages(name: str, change: dict[str, Any]) -> None:
    good = stage_change() if name == "stage-change.json" else routing_alert()
    bad = {**orjson.loads(good.to_bytes()), **change}
    with pytest.raises(jsonschema.ValidationError):
        check(name, orjson.dumps(bad))


def test_missing_field_is_rejected_by_outbound_schema() -> None:
    body = orjson.loads(stage_change().to_bytes())
    del body["reason"]  # every field is always written, nulls included
    with pytest.raises(jsonschema.ValidationError):
        check("stage-change.json", orjson.dumps(body))


def test_models_refuse_unknown_fields_and_naive_times() -> None:
    with pytest.raises(ValueError, match="extra"):
        stage_change(surprise=1)
    with pytest.raises(ValueError, match="timezone"):
        stage_change(at=datetime(2024, 5, 6, 12, 0))


# -- inbound examples ---------------------------------------------------------------------

INBOUND = [
    ("segment-track.json", {"type": "track", "event": "Trial Started", "userId": "u-1",
                            "messageId": "m-1", "timestamp": "2024-05-06T12:00:00Z",
                            "properties": {"plan": "pro"}, "integrations": {},
                            "_metadata": {"bundled": []}}),
    ("segment-page.json", {"type": "page", "name": "Pricing", "anonymousId": "a-1",
                           "messageId": "m-2", "context": {"page": {"url": "https://x/p"}}}),
    ("segment-identify.json", {"type": "identify", "userId": "u-1", "messageId": "m-3",
                               "traits": {"email": "ada@acme.example"}}),
    ("segment-alias.json", {"type": "alias", "userId": "u-1", "previousId": "a-1",
                            "messageId": "m-4"}),
    ("segment-group.json", {"type": "group", "userId": "u-1", "groupId": "acme",
                            "messageId": "m-5", "traits": {"name": "Acme"}}),
]


@pytest.mark.parametrize(("name", "msg"), INBOUND)
def test_inbound_examples_validate_and_parse(name: str, msg: dict[str, Any]) -> None:
    raw = orjson.dumps(msg)
    check(name, raw)
    check("segment-message.json", raw)
    assert parse_message(raw, now_ms=AT_MS).message_id == msg["messageId"]


def test_inbound_schema_needs_user_or_anonymous_id() -> None:
    msg = {"type": "track", "event": "x", "messageId": "m", "userId": None}
    with pytest.raises(jsonschema.ValidationError):
        check("segment-track.json", orjson.dumps(msg))
    with pytest.raises(jsonschema.ValidationError):
        check("segment-message.json", orjson.dumps({**msg, "type": "screen"}))
