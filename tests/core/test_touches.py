"""Touches: read from events, classified by the rules' channels, kept as a bounded journey."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from pipeline.core.engine import apply_batch
from pipeline.core.event import Event
from pipeline.core.rules import load_default_rules, parse_rules
from pipeline.core.state import LeadState
from pipeline.core.touches import (
    MAX_TOUCHES,
    OTHER,
    Touch,
    TouchFields,
    add,
    classify,
    extract,
    mark_last,
    touch_fields,
)
from pipeline.errors import RulesError

RULES = load_default_rules()
CH = RULES.channels
T0 = 1_767_225_600_000


def _ev(typ: str = "page", url: str = "", utm: dict[str, Any] | None = None,
        referrer: str = "", mid: str = "m1", t: int = 0) -> Event:
    return Event(mid, "u1", typ, T0 + t, url=url,  # type: ignore[arg-type]
                 utm=MappingProxyType(utm or {}), referrer=referrer)


@pytest.mark.parametrize(("event", "channel"), [
    (_ev(url="https://a.io/?utm_source=google&utm_medium=cpc&utm_campaign=brand"), "paid_search"),
    (_ev(url="https://a.io/?utm_source=LinkedIn&utm_medium=Paid_Social"), "paid_social"),
    (_ev(url="https://a.io/?utm_source=linkedin&utm_medium=cpc"), "paid_social"),
    (_ev("track", utm={"source": "newsletter", "medium": "email", "name": "dec"}), "email"),
    (_ev(url="https://a.io/?utm_medium=webinar"), "events"),
    (_ev(url="https://a.io/?utm_medium=partner&utm_source=acme"), "partner"),
    (_ev(url="https://a.io/", referrer="https://t.co/xyz"), "social"),
    (_ev(url="https://a.io/", referrer="https://www.google.de/search?q=leads"), "organic_search"),
    (_ev(url="https://a.io/", referrer="https://blog.example.org/post"), "referral"),
    (_ev(url="https://a.io/?utm_source=foo&utm_medium=carrier-pigeon"), OTHER),
])
def test_default_channels(event: Event, channel: str) -> None:
    t = extract(event, CH, first=False)
    assert t is not None and t.channel == channel


def test_campaign_context_wins_over_url_and_referrer_host_only() -> None:
    f = touch_fields(_ev(url="https://a.io/?utm_source=bing&utm_medium=cpc",
                         utm={"source": "hubspot", "medium": "email", "name": "Q4 launch"},
                         referrer="https://mail.example.com/inbox?user=ann@corp.example"))
    assert f == TouchFields("hubspot", "email", "Q4 launch", "mail.example.com")


def test_direct_only_for_a_first_sourceless_page_view() -> None:
    first = extract(_ev(url="https://a.io/"), CH, first=True)
    assert first is not None and first.channel == "direct"
    assert extract(_ev(url="https://a.io/"), CH, first=False) is None
    assert extract(_ev("track"), CH, first=True) is None
    # navigation on the site itself is no touch
    assert extract(_ev(url="https://a.io/x", referrer="https://a.io/"), CH, first=False) is None


@pytest.mark.parametrize("event", [
    _ev(url="not a url at all"),
    _ev(url="http://[::1/?utm_source=google&utm_medium=cpc"),  # does not parse
    _ev(url="https://a.io/?utm_source=%00%01&utm_medium=\x07"),  # control characters
    _ev(url="https://a.io/?utm_source=&utm_medium="),
    _ev(utm={"source": 3.5, "medium": ["cpc"], "name": None}),
    _ev(referrer="::::"),
])
def test_malformed_origin_gives_no_fields_and_no_crash(event: Event) -> None:
    assert touch_fields(event).empty()
    assert extract(event, CH, first=False) is None


def test_overlong_values_are_bounded() -> None:
    f = touch_fields(_ev(url="https://a.io/?utm_campaign=" + "x" * 5000 + "&utm_medium=cpc"))
    assert f.medium == "cpc" and f.campaign == "x" * 100


def test_consecutive_touches_of_a_channel_fold() -> None:
    a = Touch("email", 1, "m1", last_ms=1)
    j = add(add(add((), a), Touch("email", 5, "m2", last_ms=5)), Touch("email", 3, "m3",
                                                                        last_ms=3))
    assert j == (Touch("email", 1, "m1", count=3, last_ms=5),)
    j = add(j, Touch("social", 9, "m4", last_ms=9))
    assert [t.channel for t in j] == ["email", "social"]


def test_journey_is_bounded_and_keeps_first_and_marked_touches() -> None:
    j: tuple[Touch, ...] = ()
    for i in range(3 * MAX_TOUCHES):
        j = add(j, Touch("email" if i % 2 else "social", i, f"m{i}", last_ms=i))
        if i == 3:
            j = mark_last(j, "lead")
        if i == 20:
            j = mark_last(j, "mql")
    assert len(j) == MAX_TOUCHES
    assert j[0].message_id == "m0"  # first touch
    assert [t.message_id for t in j if t.marks] == ["m3", "m20"]
    assert j[-1].message_id == f"m{3 * MAX_TOUCHES - 1}"  # last touch
    assert [t.at_ms for t in j] == sorted(t.at_ms for t in j)


def test_state_keeps_touches_and_old_states_load() -> None:
    res = apply_batch(None, [_ev(url="https://a.io/?utm_source=google&utm_medium=cpc")], RULES)
    s = res.state
    assert [t.channel for t in s.touches] == ["paid_search"]
    assert LeadState.from_dict(s.to_dict()) == s
    old = s.to_dict()
    del old["touches"]  # a state stored before touches existed
    assert LeadState.from_dict(old).touches == ()


def test_rules_without_channels_record_no_touches() -> None:
    r = parse_rules("thresholds: {mql: 40, hot: 70, recycle: 10, pql: 30}\n")
    res = apply_batch(None, [_ev(url="https://a.io/?utm_source=google&utm_medium=cpc")], r)
    assert res.state.touches == ()
    assert r.channel_names() == (OTHER,)


def test_first_matching_channel_wins() -> None:
    r = parse_rules("""\
thresholds: {mql: 40, hot: 70, recycle: 10, pql: 30}
channels:
  - {id: brand, match: [{campaign: ["brand*"]}]}
  - {id: paid, match: [{medium: [cpc]}, {source: [adwords]}]}
""")
    assert classify(r.channels, TouchFields("google", "CPC", "Brand-2026")) == "brand"
    assert classify(r.channels, TouchFields("google", "cpc", "generic")) == "paid"
    assert classify(r.channels, TouchFields("AdWords")) == "paid"
    assert classify(r.channels, TouchFields("bing")) == OTHER
    assert r.channel_names() == ("brand", "paid", OTHER)


_BASE = "thresholds: {mql: 40, hot: 70, recycle: 10, pql: 30}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("channels:\n  - id: paid\n    match: [{medum: [cpc]}]\n",
     "rules.yaml:4 channels[0] (id: paid).match[0].medum: unknown key 'medum': "
     "did you mean 'medium'?"),
    ("channels:\n  - id: paid\n    match: [{}]\n",
     "channels[0] (id: paid).match[0]: a channel match needs at least one of"),
    ("channels:\n  - id: paid\n    match: [{medium: []}]\n",
     "medium: an empty list matches nothing"),
    ("channels:\n  - {id: paid, match: [{medium: [cpc]}]}\n"
     "  - {id: paid, match: [{medium: [ppc]}]}\n",
     "rules.yaml:4 channels[1] (id: paid).id: duplicate channel 'paid' (first used in "
     "channels[0])"),
    ("channels:\n  - {id: other, match: [{medium: [cpc]}]}\n",
     "'other' is the channel of touches no channel matches"),
    ("channels:\n  - {id: Paid Search, match: [{medium: [cpc]}]}\n",
     "channels[0] (id: Paid Search).id: String should match pattern"),
    ("attribution: {models: [first_touch, time_decay]}\n",
     "attribution.models[1]: Input should be 'first_touch', 'last_touch', 'linear', "
     "'u_shaped' or 'w_shaped'"),
])
def test_channel_rules_errors_name_file_line_and_path(text: str, expected: str) -> None:
    with pytest.raises(RulesError) as exc:
        parse_rules(_BASE + text)
    assert expected in str(exc.value)


@pytest.mark.parametrize(("context", "properties", "expected"), [
    ({"campaign": {"source": {"nested": 1}, "medium": ["cpc"], "name": 7}}, {},
     ("{'nested': 1}", "['cpc']", "7", None)),  # ingest keeps campaign values as text
    ({"page": {"url": "javascript:alert(1)", "referrer": 42}}, {}, (None, None, None, None)),
    ({"page": {"url": "https://a.io/?utm_source=%ZZ&utm_medium=cpc&utm_medium=email"}}, {},
     ("%ZZ", "cpc", None, None)),
    ({}, {"url": 12345, "referrer": "https://[broken"}, (None, None, None, None)),
])
def test_segment_messages_with_odd_origins_score_without_error(
        context: dict[str, Any], properties: dict[str, Any],
        expected: tuple[str | None, ...]) -> None:
    import orjson

    from pipeline.models.events import parse_message

    raw = orjson.dumps({"type": "page", "messageId": "m1", "userId": "u1",
                        "timestamp": "2026-01-01T00:00:00Z", "context": context,
                        "properties": properties})
    e = parse_message(raw)
    f = touch_fields(e)
    assert (f.source, f.medium, f.campaign, f.referrer) == expected
    state = apply_batch(None, [e], RULES).state
    # a touch without the unusable fields: the classified one, or a first direct visit
    assert len(state.touches) == 1


def test_channel_cache_is_bounded_and_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core import touches

    monkeypatch.setattr(touches, "CACHE_MAX", 3)
    cache: dict[TouchFields, str] = {}
    for i in range(10):
        e = _ev(utm={"source": f"src{i}", "medium": "cpc" if i % 2 else "email"})
        cached, plain = extract(e, CH, False, cache), extract(e, CH, False)
        assert cached == plain and cached is not None
        assert len(cache) <= 3
