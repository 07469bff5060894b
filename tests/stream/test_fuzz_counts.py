"""Counts in equal counts out: fuzzed and hand-made bad messages against a real worker.

A fixed mixed set (hypothesis, derandomized, one example) of valid Segment calls and
broken ones goes to the four input topics with a plain producer. Every case carries its
expected fate, decided by the generator from how it built the case (never by asking the
parser under test): invalid ones must be in the dead-letter topic (by source topic,
partition and offset) with that reason, valid ones must be scored (per lead, `events_seen`
of `GET /leads/{id}`), and nothing else may appear.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from pipeline.models.events import REASONS
from pipeline.settings import Settings
from tests.support.workers import Isolated, WorkerProcess, consume

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

USERS = [f"fz-user-{i}" for i in range(12)]
SOURCES = ("web", "email", "product", "crm")
# The worker runs with the default limits: 64 KiB per message, 300 s of clock skew ahead.
MAX_BYTES = 64 * 1024
SKEW_MS = 300_000

#: A fate: ("scored", lead id) or ("dead", dead-letter reason).
Fate = tuple[str, str]


@dataclass
class Msg:
    source: str  # web/email/product/crm
    key: bytes | None
    value: bytes | None
    kind: str  # what the generator meant, for failure messages
    fate: Fate  # what the worker must do with it, decided when the case was built


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4)
                          | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12)
# Values of the wrong JSON type for each kind of field: no infinities (orjson writes them as
# null, which a userId may be) and, as pydantic's lax mode takes numbers for a datetime,
# only containers for a timestamp.
not_a_string = st.integers(-(2**63), 2**63 - 1) | st.booleans() | \
    st.lists(json_leaf, max_size=3) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.dictionaries(st.text(max_size=5), json_leaf, max_size=3)
not_an_object_value = st.integers(-(2**63), 2**63 - 1) | st.booleans() | \
    st.lists(json_leaf, max_size=3) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=10)
not_a_time = st.lists(json_leaf, max_size=3) | \
    st.dictionaries(st.text(max_size=5), json_leaf, max_size=3)
WRONG_TYPE = {"messageId": not_a_string, "userId": not_a_string, "type": not_a_string,
              "event": not_a_string, "properties": not_an_object_value,
              "context": not_an_object_value, "traits": not_an_object_value,
              "timestamp": not_a_time}
TYPES = ("track", "page", "screen", "identify", "alias", "group")


def _valid(draw: Callable[..., Any], mid: str, now_ms: int) -> dict[str, Any]:
    """A valid, plainly countable call: a known userId, no anonymousId (no stitching), a
    unique messageId, an event time within the last hour, a few hundred bytes at most."""
    kind = draw(st.sampled_from(["track", "page", "identify"]))
    body: dict[str, Any] = {
        "type": kind, "messageId": mid, "userId": draw(st.sampled_from(USERS)),
        "timestamp": _iso(now_ms - draw(st.integers(0, 3600_000))),
        "context": {"library": {"name": "fuzz", "version": "1"}},
        "properties": draw(st.dictionaries(st.text(max_size=12), json_value, max_size=4)),
    }
    if kind == "track":
        body["event"] = draw(st.sampled_from(
            ["Demo Requested", "Email Opened", "Trial Started", "Form Submitted"])
            | st.text(min_size=1, max_size=40))
    elif kind == "page":
        body["name"] = draw(st.sampled_from(["Pricing", "Blog Post"]) | st.text(max_size=40))
    else:
        body["traits"] = {"email": f"{body['userId']}@example.com",
                          "title": draw(st.text(max_size=30))}
    return body


def _nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"{}" + b"}" * levels


# What a generated message is meant to be, weighted (hypothesis draws which, and the details).
KINDS = ["valid"] * 9 + ["wrong type"] * 6 + ["missing id", "not json", "bad bytes", "utf-8",
         "not an object", "untyped object", "future", "huge", "tombstone"]
N_FUZZED = 240
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _one(kind: str, draw: Callable[..., Any], n: int, now_ms: int) -> Msg:
    """One message of the given kind and its fate; `n` makes its messageId unique."""
    user: str | None = None
    value: bytes | None
    fate: Fate
    if kind == "valid":
        body = _valid(draw, f"ok-{n}", now_ms)
        user, value = body["userId"], orjson.dumps(body)
        fate = ("scored", user)
    elif kind == "wrong type":  # one field the call's type has, given a value of a wrong type
        body = _valid(draw, f"wt-{n}", now_ms)
        fields = ["messageId", "userId", "type", "properties", "context", "traits",
                  "timestamp", *(["event"] if body["type"] == "track" else [])]
        field = draw(st.sampled_from(fields))
        body[field] = draw(WRONG_TYPE[field])
        kind, value, fate = f"wrong type {field}", orjson.dumps(body), ("dead", "invalid")
    elif kind == "missing id":  # no messageId, or neither userId nor anonymousId
        body = _valid(draw, f"mi-{n}", now_ms)
        for f in draw(st.sampled_from([["messageId"], ["userId"], ["messageId", "userId"]])):
            del body[f]
        value, fate = orjson.dumps(body), ("dead", "missing_id")
    elif kind == "not json":  # printable ASCII that no JSON value can start with
        value = b"#" + draw(st.text(ASCII, max_size=200)).encode()
        fate = ("dead", "bad_json")
    elif kind == "bad bytes":  # random bytes around 0xff, which UTF-8 never contains
        value = draw(st.binary(max_size=100)) + b"\xff" + draw(st.binary(max_size=100))
        fate = ("dead", "bad_encoding")
    elif kind == "utf-8":  # invalid UTF-8 inside an otherwise valid call
        raw = orjson.dumps(_valid(draw, f"u8-{n}", now_ms))
        # 0xff is never UTF-8; ED A0 80 would be a UTF-16 surrogate, which UTF-8 forbids
        value = raw.replace(b'"type"', b'"ty\xffpe"', 1) if draw(st.booleans()) \
            else raw[:-1] + b',"x":"\xed\xa0\x80"}'
        fate = ("dead", "bad_encoding")
    elif kind == "not an object":  # valid JSON, but an array, string, number, bool or null
        value = orjson.dumps(draw(st.lists(json_value, max_size=4) | json_leaf))
        fate = ("dead", "not_an_object")
    elif kind == "untyped object":  # an object without a known Segment type
        body = draw(st.dictionaries(
            st.sampled_from(["messageId", "userId", "event", "timestamp", "x"]),
            json_value, max_size=5))
        if draw(st.booleans()):
            body["type"] = draw(json_value.filter(lambda v: v not in TYPES))
        value, fate = orjson.dumps(body), ("dead", "invalid")
    elif kind == "future":  # at least an hour ahead of the record timestamp (skew: 5 min)
        body = _valid(draw, f"fu-{n}", now_ms)
        body["timestamp"] = _iso(now_ms + draw(st.integers(3_600_000, 10**12)))
        user, value, fate = body["userId"], orjson.dumps(body), ("dead", "future_timestamp")
    elif kind == "huge":  # a 70 KB+ property: over the 64 KiB limit
        body = _valid(draw, f"big-{n}", now_ms)
        body["properties"]["blob"] = "x" * draw(st.integers(70_000, 200_000))
        user, value, fate = body["userId"], orjson.dumps(body), ("dead", "oversize")
    else:
        assert kind == "tombstone"
        user, value, fate = draw(st.sampled_from(USERS)), None, ("dead", "empty")
    src = draw(st.sampled_from(SOURCES))
    null_key = draw(st.booleans()) and value is not None  # a tombstone needs a key
    key = None if null_key else (user or draw(st.text(min_size=1, max_size=8))).encode()
    return Msg(src, key, value, kind, fate)


def generate(now_ms: int) -> list[Msg]:
    """The fixed set: one hypothesis example per message, from a fixed seed (same every run)."""
    out: list[Msg] = []

    # A fixed seed, not derandomize: derandomize's seed comes from the function's digest,
    # which differs between checkouts, and so did the mix (43 valid cases in one CI clone).
    @seed(20261203)
    @settings(max_examples=N_FUZZED, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def draw_one(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(KINDS))
        out.append(_one(kind, data.draw, len(out), now_ms))

    draw_one()
    # hand-made ones: deep nesting (the reader's limit and the writer's), empty, NaN...
    ok = {"type": "track", "messageId": "hand", "userId": USERS[0], "event": "X",
          "timestamp": _iso(now_ms)}
    dead = "dead"
    hand: list[tuple[bytes, Fate]] = [
        # orjson reads at most 1024 levels: deeper is not JSON to it
        (b'{"type":"track","properties":' + b"[" * 2000 + b"]" * 2000 + b"}",
         (dead, "bad_json")),
        (_nested(2000), (dead, "bad_json")),
        # readable, but deeper than the 128 levels the worker accepts
        (orjson.dumps(ok)[:-1] + b',"properties":' + _nested(300) + b"}", (dead, "invalid")),
        (b"", (dead, "bad_json")), (b"null", (dead, "not_an_object")),
        (b"NaN", (dead, "bad_json")), (b"{", (dead, "bad_json")),
        (b'"\xff"', (dead, "bad_encoding")), (b"[]", (dead, "not_an_object")),
        (b"{}", (dead, "invalid")),
        (orjson.dumps({**ok, "timestamp": "2999-01-01T00:00:00Z", "messageId": "hand-2"}),
         (dead, "future_timestamp")),
        (orjson.dumps({**ok, "type": "screen", "messageId": "hand-3"}), ("scored", USERS[0])),
        (orjson.dumps({**ok, "messageId": ""}), (dead, "invalid")),  # ids: 1..256 chars
        (orjson.dumps({**ok, "messageId": "m" * 257}), (dead, "invalid")),
        # every reason at least once for certain: in some runs Hypothesis drew other mixes
        (orjson.dumps({**ok, "messageId": "hand-4", "properties": {"blob": "x" * 70_000}}),
         (dead, "oversize")),
        (orjson.dumps({k: v for k, v in ok.items() if k != "messageId"}),
         (dead, "missing_id")),
    ]
    out += [Msg(SOURCES[i % 4], None if i % 2 else b"hand", raw, "hand-made", fate)
            for i, (raw, fate) in enumerate(hand)]
    out.append(Msg("crm", USERS[0].encode(), None, "hand-made tombstone", (dead, "empty")))
    return out


async def _lead_counts(worker: WorkerProcess, want: Counter[str], timeout: float) -> dict[str, int]:
    """events_seen of every lead once all reach `want` (or the deadline)."""
    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    while True:
        for lead in want:
            status, doc = await worker.get(f"/leads/{lead}")
            got[lead] = int(doc["events_seen"]) if status == 200 else 0
        if all(got[lead] >= n for lead, n in want.items()) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.5)


# Under exactly-once the inputs are read by a Faust agent, not the plain consumer, and the
# dead letters go out in the batch's transaction: the same counts must hold.
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_every_message_is_scored_or_dead_lettered_counts_match(
    isolated: Isolated, worker_factory: Callable[..., WorkerProcess], producer: AIOKafkaProducer,
    guarantee: str,
) -> None:
    isolated.env["LEADFLOW_PROCESSING_GUARANTEE"] = guarantee
    worker = worker_factory(isolated)
    await worker.wait_ready()
    t = isolated.settings.topics
    topic = {"web": t.web, "email": t.email, "product": t.product, "crm": t.crm}

    # the labels assume the worker's default limits ("huge" > 64 KiB, "future" > 5 min ahead)
    assert Settings().max_message_bytes == MAX_BYTES
    assert Settings().max_future_skew_s * 1000 == SKEW_MS
    now_ms = int(time.time() * 1000)
    msgs = generate(now_ms)
    fates = [m.fate for m in msgs]
    dead_reasons = Counter(r for f, r in fates if f == "dead")
    # the set really is mixed: every reason a worker can give on Kafka input occurs
    assert set(dead_reasons) >= {*REASONS, "empty"} - {"no_timestamp"}, dead_reasons
    assert all(r in (*REASONS, "empty") for r in dead_reasons), dead_reasons
    scored = Counter(lead for f, lead in fates if f == "scored")
    assert sum(scored.values()) >= 50 and len(msgs) - sum(scored.values()) >= 100

    # one record timestamp for all: the worker's "now" is exactly the offline one
    futures = [await producer.send(topic[m.source], m.value, key=m.key, timestamp_ms=now_ms)
               for m in msgs]
    metas = await asyncio.gather(*futures)
    where = {(md.topic, md.partition, md.offset): (m, fate)
             for md, m, fate in zip(metas, msgs, fates, strict=True)}
    assert len(where) == len(msgs)
    want_dead = {k: fate[1] for k, (_, fate) in where.items() if fate[0] == "dead"}

    got = await consume(isolated.bootstrap, [t.deadletter],
                        until=lambda out: len(out) >= len(want_dead), timeout=120)
    counts = await _lead_counts(worker, scored, timeout=120)
    # Instead of waiting a while for extras (a duplicate, a stray dead letter): one broken
    # sentinel after everything else on every input partition; once each one's dead letter
    # is out, anything the worker would add for the messages before it is out too.
    sentinels = set()
    for name in topic.values():
        for part in range(isolated.settings.partitions):
            md = await producer.send_and_wait(name, b"{sentinel", partition=part,
                                              timestamp_ms=now_ms)
            sentinels.add((md.topic, md.partition, md.offset))

    def _keys(out: list[Any]) -> set[tuple[str, int, int]]:
        return {(d["source_topic"], d["partition"], d["offset"]) for _, _, d in out}

    got = await consume(isolated.bootstrap, [t.deadletter],
                        until=lambda out: _keys(out) >= sentinels, timeout=120)
    assert _keys(got) >= sentinels, "the sentinels never reached the dead-letter topic"
    final = await _lead_counts(worker, scored, timeout=0)
    assert final == counts, "lead documents still changing"
    got = [g for g in got if (g[2]["source_topic"], g[2]["partition"], g[2]["offset"])
           not in sentinels]

    dead = {(d["source_topic"], d["partition"], d["offset"]): d for _, _, d in got}
    assert len(dead) == len(got), "a message was dead-lettered twice"
    got_reasons = {k: d["reason"] for k, d in dead.items()}
    wrong = {k: (where.get(k, (Msg("?", None, None, "not produced", ("?", "?")), None))[0].kind,
                 want_dead.get(k), got_reasons.get(k))
             for k in want_dead.keys() | got_reasons.keys()
             if want_dead.get(k) != got_reasons.get(k)}
    assert not wrong, f"{len(wrong)} messages with the wrong fate: {wrong}\n{worker.tail()}"
    for k, d in dead.items():  # the evidence is the original bytes
        assert base64.b64decode(d["value_b64"]) == (where[k][0].value or b"")
    assert counts == dict(scored), worker.tail()
    assert len(dead) + sum(counts.values()) == len(msgs)

    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    status, body = await worker.get("/healthz")
    assert status == 200 and body == {"status": "ok"}
