"""The `quix_leadflow` system of the end-to-end benchmark: leadflow's own pure steps inside
a Quix Streams application, the fair peer of the leadflow worker. Runs in the quix venv
with this repository on PYTHONPATH (`e2e_bench.quix_leadflow_python` installs the few
packages the pure modules need there; they import no Faust).

    .leadflow/bench/quix-venv/bin/python benchmarks/quix_leadflow_system.py \
        --bootstrap H:P --group G --topics t1,t2,... --sources web,email,... \
        --out ingested.json --state-dir DIR --out-prefix P. --visitor-buffer N \
        --max-message-bytes N --max-future-skew-s S --dedup-retention-s S \
        --score-ledger|--no-score-ledger [--partitions N] [--commit-interval S]

The same topology as the worker, one Quix StreamingDataFrame per hop, each step a call of
leadflow's stage functions on one record (Quix hands a callback one message at a time):

    inputs --ingest--> G-identity (by identity key) --stitch--> G-leads (by lead id)
        --score--> P.leads.*, P.routing.{nurture,recycle,review}, G-assign (by team)
        --assign--> P.routing.<team>, P.leads.assignments, owners back to G-leads

- ingest: `stages.ingest.ingest_batch` (Segment validation and decoding); rejects go to
  P.events.deadletter with leadflow's dead-letter record;
- stitch: `stages.stitch.stitch_batch`, the identity record in Quix state (RocksDB store,
  changelog topic) under the identity key;
- score: `stages.score.score` (messageId dedup window, core scoring, stage moves, the
  score ledger when on, hand-offs, alert commands), the lead record in Quix state under
  the lead id; settings (message size, future skew, dedup retention, ledger) and the
  visitor buffer are the worker's, passed by the bench;
- assign: `stages.assign.assign_stage` (owner by territory and capacity, SLA due time), the
  team record in Quix state; the owner goes back to the lead over G-leads, as in the worker.

Each hop is a topic of its own (not `group_by`, which would name and create it for us): the
same three repartitions as the worker's, and the owner updates need a second producer of
the leads topic. Output records are stamped with the time they are handed to the producer,
as the worker's are, so the bench measures latency the same way for both: the alert
record's timestamp on P.routing.<team> minus the triggering event's time.

Not done, unlike the worker: no SLA or decay timers (Quix has no wall-clock punctuation;
no escalations, no time-driven recycling); no rules feed (the shipped rules, fixed at
start); no web views or metrics; records travel one per message, not in envelopes (Quix
sends one record per message); a step that raises stops the application instead of
dead-lettering its batch. At-least-once (Quix's default), commits every
--commit-interval s instead of its 5 s default (the bench sees the end of the throughput
phase in the committed offsets). On SIGTERM Quix stops and commits; this writes
``{"ts": [...], "lat_ms": [...]}`` to --out: per valid input record, its timestamp and
the time from it to validated (the bench counts the throughput events from it).
"""

from __future__ import annotations

import argparse
import json
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.identity import identity_key
from pipeline.core.rules import CompiledRules, load_default_rules
from pipeline.errors import LeadflowError
from pipeline.settings import Topics
from pipeline.stream.codec import (
    OwnerUpdate,
    decode_assign,
    decode_event,
    decode_leads_line,
    encode_event,
    unpack,
)
from pipeline.stream.produce import Send
from pipeline.stream.stages.assign import assign_stage
from pipeline.stream.stages.ingest import dead_letter, identity_key_bytes, ingest_batch
from pipeline.stream.stages.records import Destinations, RawMessage
from pipeline.stream.stages.score import score, stored_records
from pipeline.stream.stages.stitch import stitch_batch

TS: array[float] = array("d")
LAT: array[float] = array("d")


class State(Protocol):
    """What the steps use of Quix's per-key `State`."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


class WrongKey(LeadflowError):
    """A record reached a stateful step under a key other than the one its state is kept by."""


def prefixed_topics(prefix: str, inputs: Mapping[str, str]) -> Topics:
    """Every output topic of leadflow's defaults under `prefix`; `inputs`: source -> topic."""
    names = {n: f"{prefix}{f.default}" for n, f in Topics.model_fields.items()}
    names.update(inputs)
    return Topics(**names)


def _only(key: str) -> Callable[[str], None]:
    def check(asked: str) -> None:
        if asked != key:
            raise WrongKey(f"state of {key!r} asked for {asked!r}: the record was not keyed "
                           "by what its step keeps state under")
    return check


@dataclass(frozen=True, slots=True)
class Steps:
    """leadflow's stages on one record each, with the record's Quix state; each returns the
    records to produce (all keyed, none with a partition: Quix's producer chooses it)."""

    rules: CompiledRules
    dest: Destinations
    sources: Mapping[str, str]  # input topic -> source name
    max_bytes: int
    max_future_skew_ms: int
    dedup_retention_ms: int
    visitor_buffer: int

    def outputs(self) -> list[str]:
        """Every topic a step can send to (Quix declares its topics before it runs)."""
        t, d = self.dest.topics, self.dest
        return [t.deadletter, d.identity, d.leads, d.assign, t.stage_changes, t.score_changes,
                t.nurture, t.recycle, t.review, t.attribution, t.nurture_changes,
                t.assignments, t.escalations, *(t.routing(team) for team in self.rules.teams())]

    def ingest(self, raw: RawMessage) -> list[Send]:
        res = ingest_batch([raw], self.sources, max_bytes=self.max_bytes,
                           max_future_skew_ms=self.max_future_skew_ms)
        sends = [Send(self.dest.topics.deadletter, rej.message.key,
                      dead_letter(rej, rules_version=self.dest.rules_version), None)
                 for rej in res.rejected]
        sends += [Send(self.dest.identity, identity_key_bytes(e), line, None)
                  for e, line in zip(res.events, res.encoded, strict=True)]
        return sends

    def stitch(self, value: bytes, key: bytes, state: State) -> list[Send]:
        event = decode_event(value)
        check = _only(key.decode())
        check(identity_key(event))

        def get(k: str) -> Mapping[str, Any] | None:
            check(k)
            stored: Mapping[str, Any] | None = state.get("identity")
            return stored
        res = stitch_batch([event], get, max_buffer=self.visitor_buffer)
        for k, record in res.writes.items():
            check(k)
            state.set("identity", record)
        # an event forwarded unchanged goes on as the bytes it came in
        return [Send(self.dest.leads, e.lead_id.encode(),
                     value if e is event else encode_event(e), None) for e in res.forward]

    def score(self, value: bytes, key: bytes, state: State, now_ms: int) -> list[Send]:
        check = _only(key.decode())

        def get(k: str) -> Mapping[str, Any] | None:
            check(k)
            stored: Mapping[str, Any] | None = state.get("lead")
            return stored
        line = decode_leads_line(value, key)
        check(line.lead_id)
        res = score([line], stored_records(get), self.rules, self.dest,
                    dedup_retention_ms=self.dedup_retention_ms, routed_ms=now_ms)
        for k, record in res.writes.items():
            check(k)
            state.set("lead", record.to_stored())
        return list(res.sends)

    def assign(self, value: bytes, key: bytes, state: State) -> list[Send]:
        check = _only(key.decode())

        def get(k: str) -> Mapping[str, Any] | None:
            check(k)
            stored: Mapping[str, Any] | None = state.get("team")
            return stored
        res = assign_stage([(key.decode(), decode_assign(value))], get, self.rules.routing,
                           self.dest)
        for k, record in res.writes.items():
            check(k)
            state.set("team", record)
        return list(_keyed(res.sends, self.dest.leads))


def _keyed(sends: Iterable[Send], leads: str) -> Iterable[Send]:
    """The assign stage's owner updates come as envelopes for a partition; Quix's producer
    keys records instead, so each line goes on alone under its lead id."""
    for s in sends:
        if s.topic != leads:
            yield s
            continue
        for line in unpack(s.value):
            own = decode_leads_line(line, None)
            if not isinstance(own, OwnerUpdate):
                raise LeadflowError(f"the assign stage sent {type(own).__name__} to {leads}")
            yield Send(leads, own.lead_id.encode(), line, None)


def steps_from(args: argparse.Namespace) -> Steps:
    """The steps as the bench runs them: the shipped rules, the run's topics, the worker's
    settings as the bench read them (building `Settings` here would load the collector)."""
    topics_in = args.topics.split(",")
    sources = args.sources.split(",")
    if len(sources) != len(topics_in):
        raise SystemExit(f"--sources names {len(sources)} sources for {len(topics_in)} topics")
    rules = load_default_rules()
    topics = prefixed_topics(args.out_prefix, dict(zip(sources, topics_in, strict=True)))
    dest = Destinations.of(topics, args.group, args.partitions, rules.version,
                           score_ledger=args.score_ledger)
    return Steps(rules, dest, dict(zip(topics_in, sources, strict=True)),
                 max_bytes=args.max_message_bytes,
                 max_future_skew_ms=int(args.max_future_skew_s * 1000),
                 dedup_retention_ms=int(args.dedup_retention_s * 1000),
                 visitor_buffer=args.visitor_buffer)


def build(app: Any, steps: Steps, partitions: int) -> None:
    """The four StreamingDataFrames of `Steps` on Quix application `app`."""
    from quixstreams import message_context
    from quixstreams.models.serializers import Serializer
    from quixstreams.models.topics import TopicConfig

    class SendValue(Serializer):  # type: ignore[misc]
        """A step's `Send` produced as its value bytes (its key goes as the record key)."""

        def __call__(self, value: Send, ctx: Any) -> bytes:
            return value.value

    config = TopicConfig(num_partitions=partitions, replication_factor=1)
    topics = {name: app.topic(name, key_deserializer="bytes", value_deserializer="bytes",
                              key_serializer="bytes", value_serializer=SendValue(),
                              config=config)
              for name in steps.outputs()}

    def now_ms(*_: Any) -> int:
        return int(time.time() * 1000)

    def emit(sdf: Any) -> None:
        sdf.set_timestamp(now_ms).to_topic(lambda v, *_: topics[v.topic], key=lambda v: v.key)

    def ingest(value: bytes | None, key: bytes | None, timestamp: int,
               headers: Sequence[tuple[str, bytes]] | None) -> list[Send]:
        ctx = message_context()
        sends = steps.ingest(RawMessage(ctx.topic, ctx.partition, ctx.offset, timestamp, key,
                                        value, tuple(headers or ())))
        TS.append(timestamp)
        LAT.append(time.time() * 1000 - timestamp)
        return sends

    for name in steps.sources:
        sdf = app.dataframe(app.topic(name, key_deserializer="bytes",
                                      value_deserializer="bytes"))
        emit(sdf.apply(ingest, metadata=True, expand=True))
    emit(app.dataframe(topics[steps.dest.identity]).apply(
        lambda v, k, _ts, _h, state: steps.stitch(v, k, state),
        stateful=True, metadata=True, expand=True))
    emit(app.dataframe(topics[steps.dest.leads]).apply(
        lambda v, k, _ts, _h, state: steps.score(v, k, state, now_ms()),
        stateful=True, metadata=True, expand=True))
    emit(app.dataframe(topics[steps.dest.assign]).apply(
        lambda v, k, _ts, _h, state: steps.assign(v, k, state),
        stateful=True, metadata=True, expand=True))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True, help="consumer group; internal topics G-*")
    ap.add_argument("--topics", required=True, help="input topics, comma separated")
    ap.add_argument("--sources", required=True, help="their sources (web,email,...)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--out-prefix", required=True, help="prefix of the output topics")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--commit-interval", type=float, default=0.2)
    # The worker's settings and tuning (the bench passes its own Settings' and Tuning's).
    ap.add_argument("--visitor-buffer", type=int, required=True)
    ap.add_argument("--max-message-bytes", type=int, required=True)
    ap.add_argument("--max-future-skew-s", type=float, required=True)
    ap.add_argument("--dedup-retention-s", type=float, required=True)
    ap.add_argument("--score-ledger", action=argparse.BooleanOptionalAction, required=True)
    return ap


def main() -> None:
    from quixstreams import Application

    args = parser().parse_args()
    steps = steps_from(args)
    app = Application(
        broker_address=args.bootstrap, consumer_group=args.group,
        auto_offset_reset="earliest", state_dir=args.state_dir, loglevel="WARNING",
        commit_interval=args.commit_interval,
    )
    build(app, steps, args.partitions)
    try:
        app.run()
    finally:
        Path(args.out).write_text(json.dumps({"ts": TS.tolist(), "lat_ms": LAT.tolist()}))


if __name__ == "__main__":
    main()
