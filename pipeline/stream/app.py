"""The Faust app: four batched agents around the pure core.

    events.web|email|product|crm --ingest--> <app>-identity (by anonymousId/userId)
        --stitch--> <app>-leads (by lead id) --score--> leads.stage-changes, routing.*
        --> <app>-assign (by team) --assign--> routing.<team>, routing.escalations

Each agent takes a batch (what is queued: `faust_adapter.take_queued`), runs a pure stage
from `stream.stages` over it, sends what the stage emits together with its table's
changelog records (one per key per batch), waits for the broker's acks, and only then
writes its store and lets Faust ack the batch. Outputs are therefore never behind the
state: a crash can repeat an output (at least once, with stable ids) but cannot lose one,
and replayed input is recognised by messageId in the lead state. The identity and leads
topics carry envelopes (many events in one record, see `codec.pack`) sent to the partition
of their keys, so a key's state, its changelog records and its events share one partition
(see `tables.BatchTable`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import faust
from faust.types import TP, EventT

from pipeline.core.rules import CompiledRules
from pipeline.kafka.security import KafkaSecurity
from pipeline.kafka.topics import DEFAULT_TABLES
from pipeline.metrics.registry import Metrics
from pipeline.settings import Settings
from pipeline.stream import faust_adapter, restore, transactions, web
from pipeline.stream.access import advertised_host
from pipeline.stream.cache import RecordCache
from pipeline.stream.clock import Clock
from pipeline.stream.codec import decode_assign, decode_event, decode_leads_line, unpack
from pipeline.stream.inputs import InputConsumer
from pipeline.stream.offsets import OffsetWatch, generation_starts, read_range
from pipeline.stream.produce import Send, send_records
from pipeline.stream.progress import RecoveryProgress
from pipeline.stream.progress import describe as describe_recovery
from pipeline.stream.rules_feed import RulesFeed
from pipeline.stream.stages.assign import assign_stage, sla_ticks
from pipeline.stream.stages.ingest import failed, identity_key_bytes, ingest
from pipeline.stream.stages.records import Destinations, RawMessage, StageOutput
from pipeline.stream.stages.score import score, tick_due, tick_requests
from pipeline.stream.stages.stitch import stitch
from pipeline.stream.standby import StandbyFollower
from pipeline.stream.tables import LEAD_CODEC, BatchTable

Event = EventT[Any]
log = logging.getLogger(__name__)

BATCH_MAX = 5000
#: How long the input consumer waits for records when none are buffered.
BATCH_WITHIN_S = 0.05
ENVELOPES_MAX = 64
#: The longest a fetch waits at the broker for new records, for Faust's consumer and the
#: input consumer (`faust_adapter.set_fetch_max_wait`).
FETCH_MAX_WAIT_MS = 10


@dataclass(frozen=True, slots=True)
class Tuning:
    """Batch sizes and waits. A batch is what is queued when a stage is free
    (`faust_adapter.take_queued`): one event when idle, the backlog under load, so larger
    batches amortise the per-batch cost exactly when there is a backlog to amortise."""

    batch_max: int = BATCH_MAX
    #: Envelopes per batch on the internal topics (each holds up to a batch of events).
    #: More per batch puts more of a lead's events into one table write, but a batch's
    #: decoded states are all in memory at once (README, "Tried and not kept").
    envelopes_max: int = ENVELOPES_MAX
    batch_within_s: float = BATCH_WITHIN_S
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS
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
        headers=tuple((str(k), bytes(v)) for k, v in _header_items(m.headers)),
    )


def _header_items(headers: Any) -> Iterable[tuple[Any, Any]]:
    # Faust gives a message's headers as a list of pairs or a mapping.
    if not headers:
        return ()
    return cast(Iterable[tuple[Any, Any]],
                headers.items() if hasattr(headers, "items") else headers)


def _guarded(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer body whose exceptions are logged: in Faust one would stop the whole worker.

    (Seen: a rebalance during the metrics timer made aiokafka assert and the worker exit.)
    The next tick tries again.
    """

    async def run() -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("timer %s failed; trying again at its next tick", fn.__name__)

    run.__name__ = fn.__name__
    return run


@dataclass(frozen=True, slots=True)
class _Message:
    """The fields of a Faust message the batch handlers read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float  # seconds, as Faust's
    headers: Any


@dataclass(frozen=True, slots=True, weakref_slot=True)  # tables on other stores weakref it
class _Refetched:
    """A record Faust's consumer skipped, read from the broker (see `_fill_holes`)."""

    message: _Message


#: How long reading a partition's skipped records may take before the seek fallback.
REFETCH_TIMEOUT_S = 30.0


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """Faust's RocksDB options (a fresh dict per table: Faust pops keys from it)."""
    mb = 1024 * 1024
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mb,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * mb,
        "block_cache_compressed_size": settings.rocksdb_block_cache_mb * mb,
    }


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
        self.rules = rules  # the batch's: set from the feed as each batch starts
        self.rules_feed = RulesFeed(rules, origin=str(settings.rules_file or "the shipped rules"),
                                    topic=settings.topics.rules, metrics=metrics)
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.tuning = tuning or Tuning()
        self.clock = Clock.starting(settings.clock_start, settings.clock_rate)
        t = settings.topics
        self.sources = t.inputs()
        parts = settings.partitions
        settings.worker_state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            broker=f"kafka://{bootstrap}",
            broker_credentials=KafkaSecurity.from_settings(settings).faust_credentials(),
            store=store or settings.store,
            datadir=str(settings.worker_state_dir),
            processing_guarantee=settings.processing_guarantee,
            topic_partitions=parts,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=settings.standby_replicas,
            # The built-in /table view would publish raw lead state, personal data included.
            web_tables_enabled=False,
            # Faust binds web_bind (default 0.0.0.0, all interfaces) and only advertises
            # web_host: bind the same address, so loopback by default really is loopback.
            web_bind=settings.web_host,
            web_host=advertised_host(settings, socket.gethostname()),
            web_port=settings.web_port,
            web_in_thread=False,
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=500,
            # Small records (inputs under exactly-once, changelogs in recovery, assignment
            # commands); the envelope topics get a smaller buffer of their own below.
            stream_buffer_maxsize=16384,
            topic_allow_declare=True,
            producer_acks=-1,
            # Record batches of up to 512 KiB (`produce.send_batches`): a batch's changelog records
            # for one partition mostly go as one, under the broker's 1 MiB message limit.
            producer_max_batch_size=512 * 1024,
            logging_config=None,
            # Changelogs restored in bulk before Faust's own recovery (`stream.restore`).
            TableManager=restore.RestoringTableManager,
        )
        if settings.processing_guarantee == "exactly_once":
            transactions.install(self.app)
        self.restorer = restore.BulkRestore(
            bootstrap, exactly_once=settings.processing_guarantee == "exactly_once",
            client_kwargs=KafkaSecurity.from_settings(settings).client_kwargs(),
            on_restored=metrics.restored, on_progress=self._report_recovery)
        #: Follows the standby partitions between rebalances (`stream.standby`).
        self.standby = StandbyFollower(
            bootstrap, exactly_once=settings.processing_guarantee == "exactly_once",
            client_kwargs=KafkaSecurity.from_settings(settings).client_kwargs())
        restore.install(self.app, self.restorer, self.standby)
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                               "key_serializer": "raw", "value_serializer": "raw"}
        self.inputs = self.app.topic(*self.sources, **raw)
        # Buffers are counted in records: a batch of envelopes of up to 64 KiB each (12 MiB)
        # bounds the memory.
        self.identity_topic = self.app.topic(f"{settings.app_id}-identity", partitions=parts,
                                             internal=True, maxsize=ENVELOPES_MAX, **raw)
        self.leads_topic = self.app.topic(f"{settings.app_id}-leads", partitions=parts,
                                          internal=True, maxsize=ENVELOPES_MAX, **raw)
        # bytes keys are written raw: the same bytes (and so the same partition) as the
        # keyed topic the table is fed from. Values are JSON (orjson when installed).
        table: dict[str, Any] = {"key_type": bytes, "partitions": parts}
        rocks = (store or settings.store).startswith("rocksdb")

        def opts() -> dict[str, Any]:
            return {"options": rocksdb_options(settings)} if rocks else {}
        self.identity = self.app.Table("identity", default=None, **table, **opts())
        self.leads = self.app.Table("leads", default=None, **table, **opts())
        self.assign_topic = self.app.topic(
            f"{settings.app_id}-assign", partitions=parts, internal=True, **raw
        )
        self.owners = self.app.Table("owners", default=None, **table, **opts())
        #: Decoded lead records between batches; emptied at every rebalance (`_rebalancing`).
        self.lead_cache = RecordCache(settings.lead_cache_mb * 1024 * 1024)
        #: Where the stages send (topics, internal topics, partitions, rules version).
        self.dest = Destinations.of(t, settings.app_id, parts, rules.version,
                                    score_ledger=settings.score_ledger)
        self.identity_topic_name = self.dest.identity
        self.leads_topic_name = self.dest.leads
        self.assign_topic_name = self.dest.assign
        self.input_consumer: InputConsumer | None = None
        # Offsets of the Faust-read partitions, to notice records its consumer skipped.
        self._offsets = OffsetWatch()
        #: Where each assigned partition's reading must begin (see `_on_assigned`).
        self._starts: dict[tuple[str, int], int] = {}
        self._lag_reported: set[tuple[str, int]] = set()
        self.recovery_progress = RecoveryProgress()
        if settings.processing_guarantee == "at_least_once":
            self.app.task(self._read_inputs)
        else:
            # Exactly-once needs the input offsets in Faust's transactions: its agent.
            self.app.agent(self.inputs, name=f"{settings.app_id}.ingest")(self._ingest)
        self.app.agent(self.identity_topic, name=f"{settings.app_id}.stitch")(self._stitch)
        self.app.agent(self.leads_topic, name=f"{settings.app_id}.score")(self._score)
        self.app.agent(self.assign_topic, name=f"{settings.app_id}.assign")(self._assign)
        self.app.timer(settings.sla_check_interval_s, name=f"{settings.app_id}.sla")(
            _guarded(self._sla_timer)
        )
        self.app.timer(settings.decay_check_interval_s, name=f"{settings.app_id}.decay")(
            _guarded(self._decay_timer)
        )
        self.app.timer(5.0, name=f"{settings.app_id}.metrics")(_guarded(self._metrics_timer))
        self.app.on_partitions_revoked.connect(self._rebalancing)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.task(self._follow_rules)
        web.install(self)

    # -- helpers ---------------------------------------------------------------------
    async def _send_all(self, sends: Iterable[Send]) -> list[Any]:
        """Publish now and wait for every broker ack; what was acknowledged.

        Straight to the Kafka producer (`produce.send_records`; under exactly-once, inside
        a batch, the batch's transactional one), not through `Topic.send`, whose per-record
        bookkeeping cost more than the scoring.
        """
        txn = transactions.current()
        if txn is not None:
            return await txn.send_all(sends)
        producer = await self.app.maybe_start_producer()
        return await send_records(faust_adapter.kafka_producer(producer), sends)

    async def _commit(self, out: StageOutput, table: BatchTable | None = None) -> None:
        """The commit sequence of every stage: send its records with its table's changelog
        records, wait for the acks, write the store, count. The input offsets are committed
        after this returns (by Faust's ack of the batch, or the input consumer)."""
        sends = list(out.sends)
        if table is not None:
            sends += table.stage(out.writes)
        acked = await self._send_all(sends)
        if table is not None:
            table.apply(acked)
        out.observe(self.metrics, self.clock.now_s())

    def _take_rules(self) -> None:
        """The feed's latest good rules for the next batch; every output names their version."""
        rules = self.rules_feed.current()
        if rules is not self.rules:
            self.rules = rules
            self.dest = replace(self.dest, rules_version=rules.version)

    async def _follow_rules(self) -> None:
        await self.rules_feed.run(
            self.bootstrap, KafkaSecurity.from_settings(self.settings).client_kwargs())

    # -- agents ----------------------------------------------------------------------
    async def _run_batches(
        self, stream: Any, handle: Callable[[list[Event]], Awaitable[None]], batch_max: int
    ) -> None:
        """Feed batches to `handle`; a batch that fails goes to the dead-letter topic.

        `take_events` acks a batch even when its body raises, so an exception must not
        escape: the batch's messages are dead-lettered with the error (nothing lost
        silently) and the agent goes on with the next batch.
        """
        await self.rules_feed.wait_caught_up()
        within = self.tuning.batch_within_s
        async for events in faust_adapter.take_queued(stream, batch_max, within):
            self._take_rules()  # one rules version per batch
            if self.settings.processing_guarantee == "exactly_once":
                # One transaction per source partition group, dead letters included.
                await transactions.manager(self.app).run(
                    events, handle,
                    lambda evs, exc: self._dead_letter_failed([_raw(ev) for ev in evs], exc))
                continue
            batch: list[Any] = list(events)
            holes = self._holes(batch)
            refetched: dict[TP, list[int]] = {}
            generation = self.app.consumer_generation_id
            if holes:
                batch, refetched, holes = await self._fill_holes(batch, holes, 4 * batch_max)
            try:
                await handle(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("batch of %d failed; dead-lettering it", len(batch))
                await self._dead_letter_failed([_raw(ev) for ev in batch], exc)
            self._ack_refetched(refetched, generation)
            for (topic, partition), start in holes.items():
                # Not read from the broker (see `_fill_holes`): have Faust's consumer read
                # them again; what follows them comes twice and is dropped by messageId.
                await self.app.consumer.seek(TP(topic, partition), start)

    async def _fill_holes(
        self, events: list[Any], holes: dict[tuple[str, int], int], most: int
    ) -> tuple[list[Any], dict[TP, list[int]], dict[tuple[str, int], int]]:
        """The batch with the records its partitions skipped put in, in offset order.

        Returns the batch, the offsets put in by partition, and the holes left (a partition
        whose records could not all be read from the broker, or more than `most` of them,
        from its first still missing).

        The skipped records are read from the broker by a consumer of their own and
        processed with the batch, before it: seeking Faust's consumer back to them did not
        reliably bring them. Its fetcher sets a partition's read offset after handing each
        record on, so records of the batch it was still handing on when the seek came put
        the read offset past the hole again, and the records read again below it are dropped
        (`Consumer._drain_messages`, "DROPPED MESSAGE ROFF"); and Faust commits past a
        hole where nothing (or 0) was committed (`Consumer._new_offset`), so a rebalance
        before the re-read (its revoke commits, clears the stream queues and the next
        assignment starts at that commit) loses them. Processed before the batch is acked,
        they are safe whatever Faust commits.
        """
        kwargs = KafkaSecurity.from_settings(self.settings).client_kwargs()
        left: dict[tuple[str, int], int] = {}
        refetched: dict[TP, list[int]] = {}
        for (topic, partition), start in holes.items():
            mine = [i for i, ev in enumerate(events)
                    if ev.message.topic == topic and ev.message.partition == partition]
            have = {events[i].message.offset for i in mine}
            end = max(have)
            try:
                records = await asyncio.wait_for(
                    read_range(self.bootstrap, (topic, partition), start,
                               min(end, start + most), kwargs),
                    REFETCH_TIMEOUT_S)
            except Exception as exc:  # the seek fallback
                log.warning("records %s[%d] %d..%d not read from the broker (%r); seeking "
                            "back to them", topic, partition, start, end - 1, exc)
                left[(topic, partition)] = start
                continue
            got = {r.offset: r for r in records if r.offset not in have}
            missing = sorted(set(range(start, end)) - have - set(got))
            if missing:
                left[(topic, partition)] = missing[0]
            log.warning("records %s[%d] %d..%d: read %d from the broker%s", topic, partition,
                        start, end - 1, len(got),
                        f", {len(missing)} missing from {missing[0]}" if missing else "")
            if not got:
                continue
            added = [_Refetched(_Message(r.topic, r.partition, r.offset, r.key, r.value,
                                         r.timestamp / 1000, r.headers)) for r in got.values()]
            # The partition's records in offset order, in the places its records had.
            ordered = sorted([events[i] for i in mine] + added, key=lambda ev: ev.message.offset)
            first, taken = mine[0], set(mine)
            rest = [ev for i, ev in enumerate(events) if i not in taken]
            events = rest[:first] + ordered + rest[first:]
            refetched[TP(topic, partition)] = sorted(got)
        return events, refetched, left

    def _ack_refetched(self, refetched: dict[TP, list[int]], generation: int) -> None:
        """Count the records read from the broker as acked in Faust's consumer.

        Faust commits a partition only up to its first offset not acked, and those records
        never passed through it. Not after a rebalance during the batch: the partition's
        next reader starts from the committed offset and reads them itself.
        """
        if not refetched or generation != self.app.consumer_generation_id:
            return
        consumer = cast(Any, self.app.consumer)
        assigned = consumer.assignment()
        for tp, offsets in refetched.items():
            if tp in assigned:
                faust_adapter.count_as_acked(consumer, tp, offsets)

    def _holes(self, events: Sequence[Event]) -> dict[tuple[str, int], int]:
        """Partitions whose offsets jumped in this batch -> the first offset skipped.

        Only under at-least-once: transactions leave commit markers between records, so
        under exactly-once a jump is normal (and Faust's gap accounting is right).
        """
        if self.settings.processing_guarantee != "at_least_once":
            return {}
        done = faust_adapter.committed_offsets(self.app.consumer)  # TP keys; tuples match
        starts = self._starts

        def committed(tp: tuple[str, int]) -> int | None:
            if tp in starts:  # asked of the broker at the assignment
                return starts[tp]
            offset = done.get(tp)
            return int(offset) if offset is not None and offset >= 0 else None

        holes = self._offsets.holes(
            ((ev.message.topic, ev.message.partition, ev.message.offset) for ev in events),
            committed)
        for (topic, partition), start in holes.items():
            log.error("records of %s[%d] from offset %d were skipped by the consumer; "
                      "reading them again", topic, partition, start)
            self.metrics.offset_hole(topic)
        return holes

    async def _read_inputs(self) -> None:
        """The input topics through a plain consumer (see `stream.inputs`)."""
        await self.rules_feed.wait_caught_up()
        self.input_consumer = InputConsumer(
            bootstrap=self.bootstrap,
            topics=list(self.sources),
            group_id=f"{self.settings.app_id}-ingest",
            handle=self._ingest_messages,
            on_failure=self._dead_letter_failed,
            batch_max=self.tuning.batch_max,
            within_s=self.tuning.batch_within_s,
            fetch_max_wait_ms=self.tuning.fetch_max_wait_ms,
            client_kwargs=KafkaSecurity.from_settings(self.settings).client_kwargs(),
        )
        await self.input_consumer.run()

    async def _dead_letter_failed(self, msgs: list[RawMessage], exc: BaseException) -> None:
        await self._commit(failed(msgs, exc, self.dest))

    async def _ingest(self, stream: Any) -> None:
        await self._run_batches(stream, self._ingest_batch, self.tuning.batch_max)

    async def _ingest_batch(self, events: list[Event]) -> None:
        await self._ingest_messages([_raw(ev) for ev in events])

    async def _ingest_messages(self, msgs: list[RawMessage]) -> None:
        await self._commit(ingest(
            msgs, self.sources, self.dest, max_bytes=self.settings.max_message_bytes,
            max_future_skew_ms=int(self.settings.max_future_skew_s * 1000)))

    async def _stitch(self, stream: Any) -> None:
        await self._run_batches(stream, self._stitch_batch, self.tuning.envelopes_max)

    async def _stitch_batch(self, events: list[Event]) -> None:
        items = []
        by_key: dict[bytes, Event] = {}
        for ev in events:
            for line in unpack(_value(ev)):
                e = decode_event(line)
                items.append((e, line))
                by_key[identity_key_bytes(e)] = ev
        ident = BatchTable(self.identity, by_key)
        await self._commit(stitch(items, ident.get, self.dest,
                                  max_buffer=self.tuning.visitor_buffer), ident)

    async def _score(self, stream: Any) -> None:
        await self._run_batches(stream, self._score_batch, self.tuning.envelopes_max)

    async def _score_batch(self, events: list[Event]) -> None:
        lines = []
        by_key: dict[bytes, Event] = {}
        for ev in events:
            for raw in unpack(_value(ev)):
                line = decode_leads_line(raw, ev.message.key)
                lines.append(line)
                by_key[line.lead_id.encode()] = ev
        leads = BatchTable(self.leads, by_key, LEAD_CODEC, self.lead_cache)
        await self._commit(score(
            lines, leads.get, self.rules, self.dest,
            dedup_retention_ms=int(self.settings.dedup_retention_s * 1000),
            routed_ms=self.clock.now_ms()), leads)

    async def _assign(self, stream: Any) -> None:
        await self._run_batches(stream, self._assign_batch, self.tuning.batch_max)

    async def _assign_batch(self, events: list[Event]) -> None:
        cmds = [(_key(ev).decode(), decode_assign(_value(ev))) for ev in events]
        owners = BatchTable(self.owners, {_key(ev): ev for ev in events})
        await self._commit(assign_stage(cmds, owners.get, self.rules.routing, self.dest), owners)

    async def _decay_timer(self) -> None:
        """Time-driven moves (decay below the recycle line) for leads that send nothing.

        A dry run of the pure `tick` over the local leads (`score.tick_due`); only leads
        that would move get a tick request on their own partition, so the change happens
        in-stream like any other. The store is read lazily: a million leads must not become
        a million dicts every few minutes.
        """
        now_ms = self.clock.now_ms()
        due: list[bytes] = []
        n = 0
        for n, (key, raw) in enumerate(faust_adapter.raw_items(self.leads), start=1):
            if n % 1000 == 0:
                await asyncio.sleep(0)  # a big table must not starve the agents
            if tick_due(raw, now_ms, self.rules):
                due.append(key)
        self.metrics.set_table_keys("leads", n)
        if due:
            await self._send_all(tick_requests(due, now_ms, self.dest))

    async def _rebalancing(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # A revoked partition may change on another worker before it comes back here.
        self.lead_cache.clear()

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.lead_cache.clear()  # and nothing read before the assignment is kept
        self.metrics.rebalance()
        # A partition may come back from another worker, far ahead: no hole.
        self._offsets.reset()
        consumer = cast(Any, self.app.consumer)
        if consumer is not None:
            faust_adapter.set_fetch_max_wait(consumer, self.tuning.fetch_max_wait_ms)
        self._starts = {}
        if self.settings.processing_guarantee == "at_least_once" and consumer is not None:
            # Faust seeks to the committed offsets only after recovery, while its fetcher
            # already runs, then clears its stream queues: records fetched meanwhile are
            # dropped, and on a partition with nothing (or 0) committed it never seeks
            # back (seen: the first record of a taken-over partition never scored). The
            # broker's committed offsets, asked now before anything of this assignment is
            # read, are what the first record of each partition must be.
            ours = {self.identity_topic_name, self.leads_topic_name, self.assign_topic_name}
            try:
                self._starts = await asyncio.wait_for(generation_starts(
                    self.bootstrap, self.settings.app_id,
                    [(tp.topic, tp.partition) for tp in consumer.assignment()
                     if tp.topic in ours],
                    lambda tps: consumer.earliest_offsets(*tps),
                    KafkaSecurity.from_settings(self.settings).client_kwargs()), 15.0)
            except Exception as exc:  # never fail a rebalance: Faust's view is the fallback
                log.warning("committed offsets not read at assignment (%r); holes at the "
                            "very start of a partition may go unnoticed", exc)
            # Faust counts an offset jump as done and commits past it (faust #606); with no
            # transactions on our topics a jump is a skipped record, so never commit past
            # one: the commit waits until `_holes` has had it read again.
            faust_adapter.never_commit_past_gaps(consumer)

    async def _metrics_timer(self) -> None:
        """Lag per input partition and table recovery progress, for /metrics."""
        app = self.app
        consumer = cast(Any, app.consumer)
        committed = faust_adapter.committed_offsets(consumer)
        reported: set[tuple[str, int]] = set()
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog"):
                continue
            high = consumer.highwater(tp)
            done = committed.get(tp)
            if high is not None and done is not None:
                self.metrics.set_offsets(tp.topic, tp.partition, high, done)
                reported.add((tp.topic, tp.partition))
        inputs = self.input_consumer
        if inputs is not None:
            for tp, high, done in await inputs.offsets():
                self.metrics.set_offsets(tp.topic, tp.partition, high, done)
                reported.add((tp.topic, tp.partition))
        # A partition that moved to another worker: its lag is reported there now.
        for topic, partition in self._lag_reported - reported:
            self.metrics.forget_partition(topic, partition)
        self._lag_reported = reported
        self._report_recovery()

    def _report_recovery(self) -> None:
        """Recovery progress into /readyz, /metrics and the log (timer and bulk restore)."""
        recovery = cast(Any, self.app.tables).recovery
        by_partition: dict[tuple[str, int], int] = {}
        for tp, n in recovery.active_remaining().items():
            name = tp.topic.removeprefix(f"{self.settings.app_id}-").removesuffix("-changelog")
            by_partition[(name, tp.partition)] = max(0, int(n))
        # A bulk restore under way knows its totals (and comes before Faust's recovery).
        totals = {k: c.total for k, c in self.restorer.counts.items()}
        by_partition.update({k: c.total - c.restored for k, c in self.restorer.counts.items()})
        view = self.recovery_progress.update(time.monotonic(), by_partition, totals)
        for name in DEFAULT_TABLES:
            t = view.get(name, {})
            self.metrics.set_recovery(name, t.get("remaining", 0), t.get("restored", 0),
                                      t.get("total", 0))
        if view:
            log.info("recovering from the changelogs: %s", describe_recovery(view))

    async def _sla_timer(self) -> None:
        """Ask the assign agent to escalate lapsed alerts: tables change only in-stream."""
        items = list(self.owners.items())
        self.metrics.set_table_keys("owners", len(items))
        ticks = sla_ticks(items, self.clock.now_ms(), self.dest)
        if ticks:
            await self._send_all(ticks)

    def topics_to_create(self) -> Sequence[str]:
        """Every topic name this app writes to or reads from (for the topic bootstrap)."""
        return [*self.sources, self.settings.topics.deadletter, self.settings.topics.stage_changes]
