"""Identity stitching: a visitor's events are credited to the lead once, when identified."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.event import Event
from pipeline.core.identity import IdentityRecord, identity_key, stitch, stitch_many


def ev(mid: str, ts: int, *, anon: str | None = "a1", user: str | None = None,
       type_: str = "page", name: str = "") -> Event:
    lead = user or f"anon:{anon}"
    return Event(message_id=mid, lead_id=lead, type=type_, timestamp_ms=ts,  # type: ignore[arg-type]
                 name=name, anonymous_id=anon, user_id=user)


def test_anonymous_events_wait_until_identify_then_flush_to_the_user() -> None:
    r1 = stitch(None, ev("p1", 1))
    r2 = stitch(r1.record, ev("p2", 2))
    assert r1.forward == () and r2.forward == ()
    assert [e.message_id for e in r2.record.buffer] == ["p1", "p2"]
    r3 = stitch(r2.record, ev("i1", 3, user="u1", type_="identify"))
    assert [(e.message_id, e.lead_id) for e in r3.forward] == [
        ("p1", "u1"), ("p2", "u1"), ("i1", "u1")]
    assert r3.record == IdentityRecord(user_id="u1", buffer=())
    # later anonymous events of the same visitor go straight to the lead
    r4 = stitch(r3.record, ev("p3", 4))
    assert [(e.message_id, e.lead_id) for e in r4.forward] == [("p3", "u1")]
    assert [e.timestamp_ms for e in r3.forward] == [1, 2, 3]  # own times kept


def test_a_redelivered_anonymous_event_is_buffered_once() -> None:
    r = stitch_many(None, [ev("p1", 1), ev("p1", 1), ev("p2", 2)])
    assert [e.message_id for e in r.record.buffer] == ["p1", "p2"]


def test_buffer_is_bounded_and_overflow_counted() -> None:
    r = stitch_many(None, [ev(f"p{i}", i) for i in range(10)], max_buffer=4)
    assert [e.message_id for e in r.record.buffer] == ["p6", "p7", "p8", "p9"]
    assert r.overflowed == 6 and r.record.overflowed == 6


def test_alias_is_keyed_by_previous_id() -> None:
    alias = ev("al", 5, anon=None, user="u9", type_="alias", name="a7")
    assert identity_key(alias) == "a7"
    assert identity_key(ev("x", 1, anon="a3")) == "a3"
    assert identity_key(ev("x", 1, anon=None, user="u3")) == "u3"
    r = stitch_many(None, [ev("p1", 1, anon="a7"), alias])
    assert [(e.message_id, e.lead_id) for e in r.forward] == [("p1", "u9"), ("al", "u9")]


@given(st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3", "p4"]), st.booleans()), max_size=12))
def test_every_event_is_forwarded_at_most_once_per_delivery_and_none_lost(
    items: list[tuple[str, bool]],
) -> None:
    """Whatever the order, after an identify every distinct anonymous event reached the lead."""
    events = [ev(m, i, user="u1" if ident else None, type_="identify" if ident else "page")
              for i, (m, ident) in enumerate(items)]
    events.append(ev("final-identify", 99, user="u1", type_="identify"))
    r = stitch_many(None, events)
    forwarded = {e.message_id for e in r.forward}
    assert forwarded == {e.message_id for e in events}
    assert all(e.lead_id == "u1" for e in r.forward)
    assert r.record.buffer == ()
