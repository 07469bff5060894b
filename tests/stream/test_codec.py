"""The internal topics' event encoding gives back the event it was given."""

from __future__ import annotations

from types import MappingProxyType

from pipeline.core.event import Event
from pipeline.stream.codec import decode_event, encode_event


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
