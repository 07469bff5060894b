"""The Faust app: three batched agents around the pure core.

    events.web|email|product|crm --ingest--> <app>-identity (key: anonymousId)
        --stitch--> <app>-leads (key: lead id) --score--> leads.stage-changes, routing.*

Each agent takes a batch (`take_events`), runs a pure step from `stream.steps` over it,
sends what the step emits and waits for the broker's acks, and only then writes its table
(one write per key per batch) and lets Faust ack the batch. Outputs are therefore never
behind the state: a crash can repeat an output (at least once, with stable ids) but
cannot lose one, and replayed input is recognised by messageId in the lead state.
Each table is keyed like the topic that feeds it, so a key's state, its changelog
records and its input messages share one partition (see `_Keyed`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import orjson
from faust.streams import _current_event
from faust.types import EventT

from pipeline.core.engine import tick
from pipeline.core.rules import CompiledRules
from pipeline.core.state import LeadState
from pipeline.metrics.registry import Metrics
from pipeline.models.outputs import Escalation, RoutingAlert
from pipeline.settings import Settings
from pipeline.stream import emit
from pipeline.stream.codec import decode_event, dumps, encode_event
from pipeline.stream.steps import (
    RawMessage,
    Rejected,
    assign_batch,
    ingest_batch,
    overdue,
    rec_traits,
    score_batch,
    stitch_batch,
)

Event = EventT[Any]
log = logging.getLogger(__name__)

# Decay-timer requests on the leads topic, told apart from encoded events by their start.
TICK_PREFIX = b'{"tick":'


BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05


@dataclass(frozen=True, slots=True)
class Tuning:
    """Batch size and wait: larger batches amortise Faust's per-event cost."""

    batch_max: int = BATCH_MAX
    batch_within_s: float = BATCH_WITHIN_S
    visitor_buffer: int = 200


def _value(ev: Event) -> bytes:
    # Internal topics always carry a value; a None here is a bug (dead-lettered by the guard).
    value = ev.message.value
    if value is None:
        raise ValueError(f"no value at {ev.message.topic}[{ev.message.partition}]")
    return bytes(value)


def _key(ev: Event) -> bytes:
    key = ev.message.key
    if key is None:
        raise ValueError(f"no key at {ev.message.topic}[{ev.message.partition}]")
    return bytes(key)


def _raw(ev: Event) -> RawMessage:
    m = ev.message
    return RawMessage(
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        timestamp_ms=int(m.timestamp * 1000),
        key=m.key,
        value=m.value,
    )


class _Keyed:
    """Table access for one batch, with Faust's "current event" set to the key's message.

    Faust's stores (RocksDB in particular) take the partition of a read or write from the
    current event, which exists only while iterating a stream one event at a time. In a
    batch we set it per key to the batch's message with that key: the input topic is keyed
    by the table key, so that message's partition is exactly the key's partition.
    """

    def __init__(self, table: Any, events: Sequence[Event]) -> None:
        self.table = table
        self.by_key: dict[bytes | None, Event] = {ev.message.key: ev for ev in events}

    def _bind(self, key: bytes) -> None:
        ev = self.by_key.get(key)
        if ev is None:
            raise KeyError(f"table key {key!r} is not the key of any message in the batch")
        _current_event.set(weakref.ref(ev))

    def get(self, key: str) -> Any:
        """Read a key of this batch (str key, as the pure steps use)."""
        k = key.encode()
        self._bind(k)
        return self.table.get(k)

    def put(self, key: str, value: Any) -> None:
        """Write a key of this batch: one changelog record in the key's partition."""
        k = key.encode()
        self._bind(k)
        self.table[k] = value


class LeadflowApp:
    """The Faust app with its topics, tables, agents and web views, built once at start."""

    def __init__(
        self,
        settings: Settings,
        rules: CompiledRules,
        *,
        bootstrap: str,
        metrics: Metrics,
        tuning: Tuning | None = None,
        store: str | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.tuning = tuning or Tuning()
        t = settings.topics
        self.sources = t.inputs()
        parts = settings.partitions
        (settings.home / "worker").mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            broker=f"kafka://{bootstrap}",
            store=store or settings.store,
            datadir=str(settings.home / "worker" / settings.app_id),
            processing_guarantee=settings.processing_guarantee,
            topic_partitions=parts,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=settings.standby_replicas,
            # The built-in /table view would publish raw lead state, personal data included.
            web_tables_enabled=False,
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_in_thread=False,
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=500,
            stream_buffer_maxsize=16384,
            topic_allow_declare=True,
            producer_acks=-1,
            logging_config=None,
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                               "key_serializer": "raw", "value_serializer": "raw"}
        self.inputs = self.app.topic(*self.sources, **raw)
        self.identity_topic = self.app.topic(
            f"{settings.app_id}-identity", partitions=parts, internal=True, **raw
        )
        self.leads_topic = self.app.topic(
            f"{settings.app_id}-leads", partitions=parts, internal=True, **raw
        )
        self.deadletter = self.app.topic(t.deadletter, **raw)
        self.stage_changes = self.app.topic(t.stage_changes, **raw)
        self._out_topics: dict[str, Any] = {}
        # bytes keys are written raw: the same bytes (and so the same partition) as the
        # keyed topic the table is fed from. Values are JSON (orjson when installed).
        table: dict[str, Any] = {"key_type": bytes, "partitions": parts}
        self.identity = self.app.Table("identity", default=None, **table)
        self.leads = self.app.Table("leads", default=None, **table)
        self.assign_topic = self.app.topic(
            f"{settings.app_id}-assign", partitions=parts, internal=True, **raw
        )
        self.owners = self.app.Table("owners", default=None, **table)
        self.app.agent(self.inputs, name=f"{settings.app_id}.ingest")(self._ingest)
        self.app.agent(self.identity_topic, name=f"{settings.app_id}.stitch")(self._stitch)
        self.app.agent(self.leads_topic, name=f"{settings.app_id}.score")(self._score)
        self.app.agent(self.assign_topic, name=f"{settings.app_id}.assign")(self._assign)
        self.app.timer(settings.sla_check_interval_s, name=f"{settings.app_id}.sla")(
            self._sla_timer
        )
        self.app.timer(settings.decay_check_interval_s, name=f"{settings.app_id}.decay")(
            self._decay_timer
        )
        self.app.timer(5.0, name=f"{settings.app_id}.metrics")(self._metrics_timer)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        from pipeline.stream import web  # late: the views close over this object

        web.install(self)

    # -- helpers ---------------------------------------------------------------------
    def out_topic(self, name: str) -> Any:
        """A raw output topic by name (routing topics are named by the rules' teams)."""
        topic = self._out_topics.get(name)
        if topic is None:
            topic = self.app.topic(name, key_type=bytes, value_type=bytes,
                                   key_serializer="raw", value_serializer="raw")
            self._out_topics[name] = topic
        return topic

    async def _send_all(self, sends: Iterable[tuple[Any, bytes | None, bytes]]) -> None:
        # force=True: publish now, not when Faust acks the event, so that we can wait
        # for the broker's acks before the table write.
        futures: list[Awaitable[Any]] = [
            await topic.send(key=key, value=value, force=True) for topic, key, value in sends
        ]
        if futures:
            await asyncio.gather(*futures)

    # -- agents ----------------------------------------------------------------------
    async def _run_batches(
        self, stream: Any, handle: Callable[[list[Event]], Awaitable[None]]
    ) -> None:
        """Feed batches to `handle`; a batch that fails goes to the dead-letter topic.

        `take_events` acks a batch even when its body raises, so an exception must not
        escape: the batch's messages are dead-lettered with the error (nothing lost
        silently) and the agent goes on with the next batch.
        """
        t = self.tuning
        async for events in stream.take_events(t.batch_max, within=t.batch_within_s):
            try:
                await handle(list(events))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("batch of %d failed; dead-lettering it", len(events))
                detail = f"{type(exc).__name__}: {exc}"[:2000]
                sends = [
                    (self.deadletter, ev.message.key, emit.dead_letter(
                        Rejected(_raw(ev), "internal", detail)))
                    for ev in events
                ]
                for _ in sends:
                    self.metrics.dead_letter("internal")
                await self._send_all(sends)
    async def _ingest(self, stream: Any) -> None:
        await self._run_batches(stream, self._ingest_batch)

    async def _ingest_batch(self, events: list[Event]) -> None:
        msgs = [_raw(ev) for ev in events]
        res = ingest_batch(
            msgs,
            self.sources,
            max_bytes=self.settings.max_message_bytes,
            max_future_skew_ms=int(self.settings.max_future_skew_s * 1000),
        )
        sends: list[tuple[Any, bytes | None, bytes]] = []
        for rej in res.rejected:
            self.metrics.dead_letter(rej.reason)
            sends.append((self.deadletter, rej.message.key, emit.dead_letter(rej)))
        for e, encoded in zip(res.events, res.encoded, strict=True):
            self.metrics.event_in(e.source, e.type)
            sends.append((self.identity_topic, emit.identity_key_bytes(e), encoded))
        await self._send_all(sends)

    async def _stitch(self, stream: Any) -> None:
        await self._run_batches(stream, self._stitch_batch)

    async def _stitch_batch(self, events: list[Event]) -> None:
        t = self.tuning
        decoded = [decode_event(_value(ev)) for ev in events]
        ident = _Keyed(self.identity, events)
        res = stitch_batch(decoded, ident.get, max_buffer=t.visitor_buffer)
        await self._send_all(
            (self.leads_topic, e.lead_id.encode(), encode_event(e)) for e in res.forward
        )
        for key, value in res.writes.items():
            ident.put(key, value)
        if res.overflowed:
            self.metrics.visitor_overflow(res.overflowed)

    async def _score(self, stream: Any) -> None:
        await self._run_batches(stream, self._score_batch)

    async def _score_batch(self, events: list[Event]) -> None:
        topics = self.settings.topics
        decoded = []
        ticks: dict[str, int] = {}
        for ev in events:
            raw = _value(ev)
            if raw.startswith(TICK_PREFIX):
                ticks[_key(ev).decode()] = int(orjson.loads(raw)["tick"])
            else:
                decoded.append(decode_event(raw))
        leads = _Keyed(self.leads, events)
        res = score_batch(
            decoded,
            leads.get,
            self.rules,
            dedup_retention_ms=int(self.settings.dedup_retention_s * 1000),
            ticks=ticks,
        )
        traits = {lead: rec_traits(w) for lead, w in res.writes.items()}
        routes = {}
        for lead in {e.lead_id for e in decoded}:
            rec = res.writes.get(lead) or leads.get(lead)
            if rec is not None and rec.get("route"):
                routes[lead] = rec["route"]
        p = emit.plan(res.outputs, traits, decoded, routes, self.rules.routing, topics)
        sends: list[tuple[Any, bytes | None, bytes]] = [
            (self.out_topic(name), key, value) for name, key, value in p.sends
        ]
        for team, cmd in p.assign:
            sends.append((self.assign_topic, team.encode(), dumps(cmd)))
            if cmd["op"] == "alert":  # remember the route so acks find the team
                lead = cmd["alert"]["lead_id"]
                if lead in res.writes:
                    res.writes[lead]["route"] = {
                        "team": team, "alert_id": cmd["alert"]["alert_id"]}
        await self._send_all(sends)
        for key, value in res.writes.items():
            leads.put(key, value)
        m = self.metrics
        for _ in range(res.duplicates):
            m.duplicate()
        for frm, to, refused, cause in p.moves:
            m.stage_move(frm, to, refused=refused, cause=cause)
        now = time.time()
        for e in decoded:
            m.processed(max(0.0, now - e.timestamp_ms / 1000))

    async def _assign(self, stream: Any) -> None:
        await self._run_batches(stream, self._assign_batch)

    async def _assign_batch(self, events: list[Event]) -> None:
        topics = self.settings.topics
        cmds = [(_key(ev).decode(), orjson.loads(_value(ev))) for ev in events]
        owners = _Keyed(self.owners, events)
        res = assign_batch(cmds, owners.get, self.rules.routing)
        now = time.time()
        sends: list[tuple[Any, bytes | None, bytes]] = []
        for out in res.emitted:
            name = topics.escalations if out.role == "escalations" else \
                topics.routing(out.team)
            if out.role == "team":
                latency = now - int(out.body["triggered_ms"]) / 1000
                self.metrics.alert(out.team, out.body["kind"], max(0.0, latency))
            wire = Escalation if out.role == "escalations" else RoutingAlert
            sends.append(
                (self.out_topic(name), out.key.encode(), wire.model_validate(out.body).to_bytes())
            )
        await self._send_all(sends)
        for key, value in res.writes.items():
            owners.put(key, value)
        for team, kind in res.breaches:
            self.metrics.sla_breach(team, kind)
        for team, _kind, seconds in res.speed_to_lead:
            self.metrics.speed_to_lead(team, seconds)

    async def _decay_timer(self) -> None:
        """Time-driven moves (decay below the recycle line) for leads that send nothing.

        A dry run of the pure `tick` over the local leads; only leads that would move get a
        tick message on their own partition, so the change happens in-stream like any other.
        """
        now_ms = int(time.time() * 1000)
        items = list(self.leads.items())
        self.metrics.set_table_keys("leads", len(items))
        for n, (key, record) in enumerate(items):
            if n % 500 == 499:
                await asyncio.sleep(0)  # a big table must not starve the agents
            if record is None:
                continue
            if tick(LeadState.from_dict(record["s"]), now_ms, self.rules).outputs:
                await self.leads_topic.send(key=key, value=dumps({"tick": now_ms}))

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.metrics.rebalance()

    async def _metrics_timer(self) -> None:
        """Lag per input partition and table recovery progress, for /metrics."""
        app = self.app
        consumer = cast(Any, app.consumer)
        committed = consumer._committed_offset  # Faust keeps no public view of it
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog"):
                continue
            high = consumer.highwater(tp)
            done = committed.get(tp)
            if high is not None and done is not None:
                self.metrics.set_offsets(tp.topic, tp.partition, high, done)
        recovery = cast(Any, app.tables).recovery
        remaining: dict[str, int] = {}
        for tp, n in recovery.active_remaining().items():
            name = tp.topic.removeprefix(f"{self.settings.app_id}-").removesuffix("-changelog")
            remaining[name] = remaining.get(name, 0) + max(0, int(n))
        for name in ("leads", "identity", "owners"):
            self.metrics.set_recovery(name, remaining.get(name, 0))

    async def _sla_timer(self) -> None:
        """Ask the assign agent to escalate lapsed alerts: tables change only in-stream."""
        now_ms = int(time.time() * 1000)
        items = list(self.owners.items())
        self.metrics.set_table_keys("owners", len(items))
        for team, record in items:
            if record is not None and overdue(record, now_ms):
                await self.assign_topic.send(
                    key=team, value=dumps({"op": "tick", "now_ms": now_ms}))

    def topics_to_create(self) -> Sequence[str]:
        """Every topic name this app writes to or reads from (for the topic bootstrap)."""
        return [*self.sources, self.settings.topics.deadletter, self.settings.topics.stage_changes]
