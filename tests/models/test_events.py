"""Inbound Segment messages: each reason code, real library payloads, and a fuzz test."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.event import Event
from pipeline.errors import InvalidEvent
from pipeline.models.events import REASONS, parse_message

NOW_MS = int(datetime(2024, 5, 6, 12, 0, tzinfo=UTC).timestamp() * 1000)

# -- real payload shapes -------------------------------------------------------------------
# Captured from analytics.js ("next" / AJS 2.0) and analytics-python 2.x; ids shortened.

AJS_CONTEXT: dict[str, Any] = {
    "library": {"name": "analytics.js", "version": "next-1.70.0"},
    "locale": "en-US",
    "page": {
        "path": "/pricing",
        "referrer": "https://www.google.com/",
        "search": "?utm_source=google&utm_medium=cpc",
        "title": "Pricing - Acme",
        "url": "https://acme.example/pricing?utm_source=google&utm_medium=cpc",
    },
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "userAgentData": {"brands": [{"brand": "Chromium", "version": "124"}], "mobile": False,
                      "platform": "Linux"},
    "campaign": {"source": "google", "medium": "cpc"},
}
AJS_META = {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []}

AJS_PAGE: dict[str, Any] = {
    "anonymousId": "2f7c4cbe-5a4b-4c3e-9a63-4be4e0b1c1a2",
    "category": None,
    "context": AJS_CONTEXT,
    "integrations": {},
    "messageId": "ajs-next-1714996800000-9b1f0a3c-1111-4d0e-8a2b-3c4d5e6f7a8b",
    "name": "Pricing",
    "originalTimestamp": "2024-05-06T11:59:59.123Z",
    "properties": {
        "path": "/pricing", "referrer": "https://www.google.com/", "search": "",
        "title": "Pricing - Acme", "url": "https://acme.example/pricing",
    },
    "receivedAt": "2024-05-06T12:00:00.001Z",
    "sentAt": "2024-05-06T11:59:59.200Z",
    "timestamp": "2024-05-06T11:59:59.924Z",
    "type": "page",
    "userId": None,
    "writeKey": "dev-web-key",
    "_metadata": AJS_META,
}

AJS_TRACK: dict[str, Any] = {
    **{k: v for k, v in AJS_PAGE.items() if k not in ("name", "category")},
    "type": "track",
    "event": "Demo Requested",
    "messageId": "ajs-next-1714996800001-aa",
    "properties": {"plan": "enterprise", "seats": 40},
}

AJS_IDENTIFY: dict[str, Any] = {
    **{k: v for k, v in AJS_PAGE.items() if k not in ("name", "category", "properties")},
    "type": "identify",
    "messageId": "ajs-next-1714996800002-bb",
    "userId": "u-42",
    "traits": {"email": "ada@acme.example", "title": "VP Engineering", "company": "Acme"},
}

AJS_ALIAS: dict[str, Any] = {
    "type": "alias", "previousId": "2f7c4cbe-5a4b-4c3e-9a63-4be4e0b1c1a2", "userId": "u-42",
    "messageId": "ajs-next-1714996800003-cc", "context": AJS_CONTEXT, "integrations": {},
    "timestamp": "2024-05-06T11:59:59.924Z", "_metadata": AJS_META,
}

PY_GROUP: dict[str, Any] = {  # analytics-python: anonymousId null, context.library only
    "integrations": {}, "anonymousId": None, "traits": {"name": "Acme", "employees": 250},
    "timestamp": "2024-05-06T11:59:59.000000+00:00",
    "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
    "userId": "u-42", "type": "group", "groupId": "acme", "messageId": "9b1c5e8e-7d1f",
    "sentAt": "2024-05-06T11:59:59.100000+00:00",
}

PY_TRACK: dict[str, Any] = {
    "integrations": {}, "anonymousId": None, "properties": {"feature": "sso"},
    "timestamp": "2024-05-06T11:59:58.500000+00:00",
    "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
    "userId": "u-42", "type": "track", "event": "Feature Limit Hit",
    "messageId": "1f0e8a7c-3b2a-4d6e-9f10-112233445566",
}


def parse(data: Any, **kw: Any) -> Event:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return parse_message(raw, source="web", now_ms=NOW_MS, **kw)


def reason_of(data: Any, **kw: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(data, **kw)
    assert info.value.reason in REASONS
    return info.value.reason


# -- good messages -----------------------------------------------------------------------


def test_analytics_js_page() -> None:
    e = parse(AJS_PAGE)
    assert (e.type, e.name, e.source) == ("page", "Pricing", "web")
    assert e.message_id == AJS_PAGE["messageId"]
    assert e.lead_id == "anon:2f7c4cbe-5a4b-4c3e-9a63-4be4e0b1c1a2"
    assert e.user_id is None
    assert e.url == "https://acme.example/pricing"
    assert dict(e.utm) == {"source": "google", "medium": "cpc"}
    assert e.referrer == "https://www.google.com/"
    assert e.timestamp_ms == int(datetime(2024, 5, 6, 11, 59, 59, 924000, UTC).timestamp() * 1000)


def test_analytics_js_track_and_identify() -> None:
    t = parse(AJS_TRACK)
    assert (t.type, t.name, t.properties["seats"]) == ("track", "Demo Requested", 40)
    i = parse(AJS_IDENTIFY)
    assert (i.type, i.lead_id, i.user_id) == ("identify", "u-42", "u-42")
    assert i.traits["email"] == "ada@acme.example"
    assert i.anonymous_id == AJS_IDENTIFY["anonymousId"]
    # a track call's referrer is the page's (context.page.referrer): no properties.referrer
    assert t.referrer == "https://www.google.com/"


def test_referrer_that_is_not_text_is_left_out() -> None:
    msg = {**AJS_TRACK, "properties": {"referrer": 42},
           "context": {**AJS_CONTEXT, "page": {"referrer": ["x"]}}}
    assert parse(msg).referrer == ""


def test_alias_and_group() -> None:
    a = parse(AJS_ALIAS)
    assert (a.type, a.name, a.lead_id) == ("alias", AJS_ALIAS["previousId"], "u-42")
    g = parse(PY_GROUP)
    assert (g.type, g.name, g.traits["employees"]) == ("group", "acme", 250)


def test_analytics_python_track() -> None:
    e = parse(PY_TRACK)
    assert (e.name, e.lead_id, e.anonymous_id) == ("Feature Limit Hit", "u-42", None)
    assert e.timestamp_ms == NOW_MS - 1500


def test_unknown_track_event_is_accepted() -> None:
    e = parse({**PY_TRACK, "event": "Something Nobody Scores"})
    assert e.name == "Something Nobody Scores"


def test_time_falls_back_to_sent_at_then_broker_time() -> None:
    msg = {k: v for k, v in PY_GROUP.items() if k != "timestamp"}
    assert parse(msg).timestamp_ms == NOW_MS - 900
    bare = {k: v for k, v in msg.items() if k != "sentAt"}
    assert parse(bare).timestamp_ms == NOW_MS


# -- every reason code --------------------------------------------------------------------


def test_bad_json() -> None:
    assert reason_of(b'{"type": "track",') == "bad_json"
    assert reason_of(b"") == "bad_json"
    assert reason_of(b"NaN") == "bad_json"


def test_deep_json_hits_orjson_depth_limit() -> None:
    deep = b'{"type":"track","properties":' + b"[" * 2000 + b"]" * 2000 + b"}"
    with pytest.raises(InvalidEvent) as info:
        parse(deep)
    assert info.value.reason == "bad_json"
    assert "depth" in info.value.detail


def test_invalid_utf8() -> None:
    assert reason_of(b'{"type":"track","event":"\xff\xfe"}') == "bad_encoding"
    assert reason_of(b'{"event":"\\ud800"}') == "bad_encoding"  # lone surrogate


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"track"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert reason_of(raw) == "not_an_object"


def test_oversize() -> None:
    big = {**PY_TRACK, "properties": {"blob": "x" * 5000}}
    with pytest.raises(InvalidEvent) as info:
        parse(big, max_bytes=4096)
    assert info.value.reason == "oversize"
    assert "4096" in info.value.detail


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "tracks"}, "type"),
        ({"event": 42}, "event"),
        ({"event": ""}, "event"),
        ({"properties": [1, 2]}, "properties"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"userId": 7}, "userId"),
        ({"context": "web"}, "context"),
    ],
)
def test_wrong_types_are_invalid_and_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse({**PY_TRACK, **change})
    assert info.value.reason == "invalid"
    assert field in info.value.detail


def test_missing_type_is_invalid() -> None:
    msg = {k: v for k, v in PY_TRACK.items() if k != "type"}
    assert reason_of(msg) == "invalid"


def test_missing_message_id() -> None:
    msg = {k: v for k, v in PY_TRACK.items() if k != "messageId"}
    assert reason_of(msg) == "missing_id"


def test_missing_both_user_and_anonymous_id() -> None:
    assert reason_of({**PY_TRACK, "userId": None, "anonymousId": None}) == "missing_id"
    msg = {k: v for k, v in AJS_PAGE.items() if k != "anonymousId"}
    assert reason_of(msg) == "missing_id"


def test_future_timestamp() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse({**PY_TRACK, "timestamp": "2024-05-06T13:00:00Z"})
    assert info.value.reason == "future_timestamp"
    # within the allowed skew it is fine
    assert parse({**PY_TRACK, "timestamp": "2024-05-06T12:04:00Z"}).timestamp_ms > NOW_MS


def test_no_timestamp_without_broker_time() -> None:
    msg = {k: v for k, v in PY_TRACK.items() if k != "timestamp"}
    with pytest.raises(InvalidEvent) as info:
        parse_message(orjson.dumps(msg))
    assert info.value.reason == "no_timestamp"


def test_every_reason_code_is_covered() -> None:
    """Guard: a new reason code needs a test above (and a dead-letter doc line)."""
    assert set(REASONS) == {
        "oversize", "bad_encoding", "bad_json", "not_an_object", "invalid", "missing_id",
        "future_timestamp", "no_timestamp",
    }


# -- fuzz: nothing but Event or InvalidEvent ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

# Extreme offsets next to extreme dates reach the edges of datetime arithmetic.
ZONES = [None, UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))]

# Near-valid messages: Segment keys with arbitrary values, to get past decoding.
segment_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "page", "identify", "alias", "group", "screen"])
        | json_values,
        "messageId": st.text(max_size=300) | json_values,
        "userId": st.text(max_size=5) | json_values,
        "anonymousId": st.text(max_size=5) | json_values,
        "event": st.text(max_size=5) | json_values,
        "previousId": st.text(max_size=5) | json_values,
        "groupId": st.text(max_size=5) | json_values,
        "timestamp": st.datetimes().map(lambda d: d.isoformat()) | st.integers() | json_values,
        "sentAt": st.datetimes(timezones=st.sampled_from(ZONES)).map(lambda d: d.isoformat())
        | json_values,
        "context": st.fixed_dictionaries(
            {}, optional={"page": json_values, "campaign": json_values, "traits": json_values}
        ) | json_values,
        "properties": st.dictionaries(st.text(max_size=5), json_values) | json_values,
        "traits": json_values,
    },
)


def _outcome(raw: bytes) -> None:
    try:
        e = parse_message(raw, source="web", now_ms=NOW_MS, max_bytes=64 * 1024)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(e, Event)
        assert e.message_id and e.lead_id


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _outcome(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    _outcome(json.dumps(value).encode())  # stdlib: big ints and lone surrogates too


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segment_like)
def test_fuzz_segment_like_messages(msg: dict[str, Any]) -> None:
    _outcome(json.dumps(msg).encode())
