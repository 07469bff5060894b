"""Exactly-once for the batched agents: one Kafka transaction per batch and source group.

Faust's own `TransactionManager` picks the transaction of a record by the partition it is
sent *to* (``f"{app id}-{group}-{partition}"`` of the destination topic), and commits the
input offsets of a partition in the transaction of that partition. That is only exact for
an agent that writes back to its own partition: ours re-key (the identity, leads and
assign topics are keyed by anonymousId, lead and team), send envelopes to other
partitions, and write routing topics and dead letters that no agent of the app reads
(`group_for_topic` has no group for them and raises KeyError; a send whose partition
metadata is not known yet goes out with no transaction at all). The outputs of a batch
and the offsets that say the batch is done were therefore in different transactions, or
in none.

What Kafka needs instead is that everything a batch produces -- its outputs to any
topic and partition, and its tables' changelog records -- goes out in the *same*
transaction as the batch's input offsets. So here a batch is split by the transactional
id of its *source* partition group (the id Faust gives it, one per consumed partition
number and topic group, so that the next owner of those partitions fences the previous
one), and each part runs as one transaction:

    begin; handle(events) -> sends (any topic/partition); send_offsets(last + 1); commit

Faust's periodic offset commit is then a no-op (`ExactlyOnce.commit`): the offsets are
already in the transactions. The local table store is written only after the commit
(`BatchTransaction.after_commit`): written before, a worker killed between the store write
and the commit would keep state whose changelog records and outputs were aborted, and the
replayed input would then be dropped as a duplicate by messageId -- its outputs lost.

Faust's recovery resumes the stream partitions *before* it seeks them to their committed
offsets (`Recovery._resume_streams` and `.on_recovery_completed`, one offset request per
partition), so records fetched in between are handled and committed and then come again
from the offset read before that commit, and around that seek its consumer also failed to
deliver records at all. Both were seen in the crash test: three identity records stitched
twice, 0.17 s apart, right after a restart (their events on the leads topic twice, read
committed); and events.web[3] offset 330 handled, then 336-350, 331-335 never delivered
(their events lost; all offsets committed). `_Consumer` therefore holds the stream
partitions back until the seek is done, and `ExactlyOnce.run` still drops any record below
the offset this worker has committed for its partition (or seen twice in one batch).

Records of a partition not active in Faust were also dropped *after* that seek:
aiokafka's `fetched_records`, waiting with Faust's live set of active partitions, returns
every partition's records once a rebalance has emptied that set, and Faust's `getmany`
drops those of partitions it does not hand on, their position already past them; the next
transaction then committed past them. `_ConsumerThread._fetch_records` seeks such records
back, to be fetched again.

That seek is also what reads again the records Faust's consumer throws away during a
rebalance: records fetched while its flow is stopped (`Consumer.getmany`, "getmany called
while flow not active") or cut off by a new generation are dropped, on the promise that
the seek to the committed offsets fetches them once more. aiokafka's `seek_to_committed`
skips a partition with no committed offset (or 0), so there the position stayed past the
dropped records and they were never delivered, and the next batch's transaction committed
past them. `_ConsumerThread.seek_to_committed` seeks such partitions to their beginning.

Sends outside a batch (the SLA and decay timers' requests) go through Faust's plain
idempotent producer: they are requests whose effects happen in-stream, in transactions.

Table recovery: under exactly-once Faust takes a changelog partition's highwater from
aiokafka's `last_stable_offset`, which is None until that partition has been fetched, so
at start every changelog highwater was -1: recovery was skipped (a store behind its
changelog stayed behind) or, with a store, failed with ConsistencyError ("persisted offset
... is higher than the last offset in that topic (highwater) (4 > -1)", seen on the first
restart of the crash test). `_Consumer` asks the broker instead (ListOffsets with the
consumer's read_committed isolation: the last stable offset).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.exceptions import ProducerSendError
from faust.transport.consumer import TopicPartitionGroup, TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, EventT

from pipeline.stream import faust_adapter
from pipeline.stream.produce import Send, send_records

log = logging.getLogger(__name__)

Event = EventT[Any]


class TransactionFailed(Exception):
    """Kafka refused a transaction step: the worker must stop and start over.

    (Fenced by a newer owner of the partitions, a broker timeout, no producer for a
    partition group.) Retrying in place could commit offsets past a batch whose outputs
    were aborted; a restart reads again from the committed offsets.
    """


class BatchTransaction:
    """The transaction one part of a batch runs in: its producer and what waits on commit."""

    def __init__(self, transactional_id: str, producer: AIOKafkaProducer) -> None:
        self.transactional_id = transactional_id
        self.producer = producer
        self._after: list[Callable[[], None]] = []

    async def send_all(self, sends: Iterable[Send]) -> list[Any]:
        """Send in this transaction and wait for every broker ack (`produce.send_records`)."""
        return await send_records(self.producer, sends)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the transaction has committed (never if it aborts)."""
        self._after.append(fn)


#: Offsets a committed transaction's marker takes after its last record on a partition.
#: A table's changelog partition has one writer, the transactional id of its source
#: partition (fenced on takeover), and that producer's next transaction cannot add the
#: partition before the previous one's markers are written (CONCURRENT_TRANSACTIONS), so
#: the commit marker is the offset right after the batch's last changelog record. Faust's
#: recovery counts a partition as recovered once it has read up to the last stable offset
#: - 1, i.e. that marker, which it never receives as a record: with the last record as
#: the persisted offset every restart waited for Faust's aborted-transaction check (two
#: empty 5 s polls, `Recovery._slurp_changelogs`). Reasoned for Kafka 3.9's transaction
#: protocol, the one the tests run.
MARKER = 1

_current: contextvars.ContextVar[BatchTransaction | None] = contextvars.ContextVar(
    "leadflow_batch_transaction", default=None)


def current() -> BatchTransaction | None:
    """The transaction of the batch being handled, if any (exactly-once only)."""
    return _current.get()


class ExactlyOnce(TransactionManager):
    """Faust's transaction manager, keyed by the *source* partition group of each batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Per consumed partition, the input offset our last committed transaction
        #: stored: anything below it is done (see the module docstring).
        self._committed: dict[TP, int] = {}

    # -- the transactional ids -----------------------------------------------------------
    def transactional_id(self, tp: TP) -> str:
        """Faust's id for the partition group of a consumed partition."""
        group = self.app.assignor.group_for_topic(tp.topic)
        return self.transactional_id_format.format(
            group_id=self.app.conf.id, tpg=TopicPartitionGroup(tp.topic, tp.partition, group))

    # -- Faust's hooks ------------------------------------------------------------------
    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP]) -> None:
        """Keep one started transactional producer per assigned (active) partition group.

        Starting one with an id fences its previous holder and aborts that holder's open
        transaction (a worker killed mid-batch); only then do read_committed readers of
        the partitions it wrote get past it.
        """
        for tp in revoked:
            self._committed.pop(tp, None)
        wanted = self._tps_to_transactional_ids(assigned)
        for tid in sorted(set(self._producers) - wanted):
            producer = self._producers.pop(tid)
            await producer.stop()
        missing = sorted(wanted - set(self._producers))
        if missing:
            self.log.info("Starting transactional producers %s", ", ".join(missing))
            started = await asyncio.gather(*(self._start(tid) for tid in missing))
            self._producers.update(zip(missing, started, strict=True))

    async def _start(self, tid: str) -> AIOKafkaProducer:
        # Faust's driver builds it with the app's settings and credentials (acks=all,
        # idempotence); `start` sends InitProducerId, which fences and aborts.
        producer = cast(AIOKafkaProducer,
                        faust_adapter.new_transactional_producer(self.producer, tid))
        await producer.start()
        self._locks.setdefault(tid, asyncio.Lock())
        return producer

    async def on_stop(self) -> None:
        """Stop the transactional producers (an open transaction is aborted by the next)."""
        producers, self._producers = list(self._producers.values()), {}
        for producer in producers:
            await producer.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Awaitable[RecordMetadata]:
        """A send outside any batch (timers): Faust's plain idempotent producer."""
        return cast(Awaitable[RecordMetadata], await self.producer.send(
            topic, key, value, partition, timestamp, headers))

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Faust's periodic commit: the offsets were committed with each batch already.

        True so that Faust keeps its bookkeeping of what is committed.
        """
        return True

    # -- batches --------------------------------------------------------------------------
    def _parts(self, events: Sequence[Event]) -> list[tuple[str, list[Event]]]:
        parts: dict[str, list[Event]] = {}
        again = 0
        taken = dict(self._committed)  # per partition: the next offset not yet handled
        for ev in events:
            m = ev.message
            tp = TP(m.topic, m.partition)
            if m.offset < taken.get(tp, -1):
                # Committed by an earlier transaction of ours, or twice in this batch.
                again += 1
                log.debug("again: %s[%d]@%d < %d", m.topic, m.partition, m.offset,
                          taken.get(tp, -1))
                continue
            taken[tp] = m.offset + 1
            parts.setdefault(self.transactional_id(tp), []).append(ev)
        if again:
            log.info("dropped %d records delivered again after their commit", again)
        return list(parts.items())

    async def run(
        self,
        events: Sequence[Event],
        handle: Callable[[list[Event]], Awaitable[None]],
        on_failure: Callable[[list[Event], BaseException], Awaitable[None]],
    ) -> None:
        """Handle a batch, one transaction per source partition group.

        A part whose handler raises is aborted and then dead-lettered in a transaction of
        its own (with its offsets: nothing lost, nothing left behind). A Kafka error in a
        transaction step stops the worker (`TransactionFailed`): at-least-once would
        dead-letter the batch, but here the restart reads it again exactly.
        """
        for tid, part in self._parts(events):
            try:
                await self._transaction(tid, part, handle)
            except TransactionFailed as exc:
                await self.app.crash(exc)
                raise
            except Exception as exc:
                log.exception("batch of %d failed; dead-lettering it", len(part))

                async def dead_letter(evs: list[Event], exc: BaseException = exc) -> None:
                    await on_failure(evs, exc)

                try:
                    await self._transaction(tid, part, dead_letter)
                except Exception as exc2:
                    failed = TransactionFailed(f"dead-lettering failed: {exc2!r}")
                    await self.app.crash(failed)
                    raise failed from exc2

    async def _transaction(self, tid: str, part: list[Event],
                           handle: Callable[[list[Event]], Awaitable[None]]) -> None:
        producer = self._producers.get(tid)
        if producer is None:
            # Revoked meanwhile (a producer is started for every assigned group, or the
            # rebalance crashes the worker): nothing of this part was committed, so its new
            # owner reads it again from the committed offsets.
            log.warning("%d events of %s, no longer assigned, left to its new owner",
                        len(part), tid)
            return
        offsets: dict[TopicPartition, int] = {}
        for ev in part:
            m = ev.message
            tp = TopicPartition(m.topic, m.partition)
            offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
        txn = BatchTransaction(tid, producer)
        if log.isEnabledFor(logging.DEBUG):  # which offsets each transaction covers
            log.debug("transaction %s: %s", tid, {
                f"{tp.topic}[{tp.partition}]": offset for tp, offset in offsets.items()})
        async with self._locks[tid]:
            try:
                await producer.begin_transaction()
            except KafkaError as exc:
                raise TransactionFailed(f"begin {tid}: {exc!r}") from exc
            token = _current.set(txn)
            try:
                await handle(part)
            except (KafkaError, ProducerSendError) as exc:
                # A send the broker refused is not the data's fault: no dead letter.
                await self._abort(tid, producer)
                raise TransactionFailed(f"send in {tid}: {exc!r}") from exc
            except BaseException:
                await self._abort(tid, producer)
                raise
            finally:
                _current.reset(token)
            try:
                await producer.send_offsets_to_transaction(offsets, self.app.conf.id)
                await producer.commit_transaction()
            except (KafkaError, ProducerSendError) as exc:
                await self._abort(tid, producer)
                raise TransactionFailed(f"commit {tid}: {exc!r}") from exc
            for tp, offset in offsets.items():
                self._committed[TP(tp.topic, tp.partition)] = offset
        for fn in txn._after:
            fn()

    async def _abort(self, tid: str, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.shield(producer.abort_transaction())
        except Exception as exc:  # fenced or gone: the next owner's start aborts it
            log.warning("abort of %s failed: %r", tid, exc)


def from_start(committed: Mapping[Any, int | None], changelogs: Collection[str]) -> list[Any]:
    """The stream partitions of `committed` (partition -> committed offset) that must be
    read from their beginning: nothing committed yet, or 0. Changelog partitions are left
    to Faust's recovery, which positions them itself."""
    return sorted(tp for tp, offset in committed.items()
                  if not offset and tp.topic not in changelogs)


def handed_on(records: Mapping[TP, list[Any]], hands_on: Callable[[TP], bool],
              assigned: Collection[Any]) -> tuple[dict[TP, list[Any]], dict[TP, int]]:
    """Split fetched records (partition -> records) into those Faust's consumer hands on
    and, per assigned partition whose records it would drop, the offset to seek back to
    (its first fetched record). A partition no longer assigned is its next owner's."""
    kept: dict[TP, list[Any]] = {}
    back: dict[TP, int] = {}
    for tp, recs in records.items():
        if hands_on(tp):
            kept[tp] = recs
        elif recs and tp in assigned:
            back[tp] = recs[0].offset
    return kept, back


class _ConsumerThread(AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and partitions with none to their beginning.

        Faust drops what its fetcher brought during a rebalance and relies on this seek to
        read it again; aiokafka's seeks only partitions committed past 0 (module docstring).
        """
        return cast(Mapping[TP, int], await self.call_thread(self._seek_to_committed))

    async def _seek_to_committed(self) -> Mapping[Any, int | None]:
        consumer = faust_adapter.aiokafka_consumer(self)
        committed = cast(Mapping[Any, "int | None"], await consumer.seek_to_committed())
        fresh = from_start(committed, faust_adapter.changelog_topics(self.app.tables))
        if fresh:
            log.debug("no committed offset for %s: reading from the beginning",
                      ", ".join(f"{tp.topic}[{tp.partition}]" for tp in fresh))
            # One ListOffsets request and a seek each, not `seek_to_beginning`, which waits
            # for the fetcher's next round of offset resets.
            starts = await consumer.beginning_offsets(
                [TopicPartition(tp.topic, tp.partition) for tp in fresh])
            for tp, offset in starts.items():
                consumer.seek(tp, offset)
        return committed

    async def _fetch_records(self, consumer: Any, active_partitions: set[TP],
                             timeout: float | None = None,
                             max_records: int | None = None) -> Mapping[TP, list[Any]]:
        """The fetched records of the partitions Faust hands on; the others are sought back
        to their first record, to be fetched again once their partition is handed on.

        aiokafka's `fetched_records` is given Faust's live set of active partitions and,
        while it waits, reads it again: emptied by a rebalance (every partition paused) it
        returns every partition's records, and the records of a partition that is not
        active are dropped by Faust's `Consumer.getmany` with their position already past
        them. Dropped before the seek to the committed offsets, they are read again; after
        it (the stream partitions are resumed only after that seek, `_Consumer`), never.
        """
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records)
        # No await from the fetch to the seeks: nothing else on this thread's loop (the
        # seek to the committed offsets) runs in between.
        kept, back = handed_on(records, lambda tp: faust_adapter.hands_on(self.consumer, tp),
                               consumer.assignment())
        for tp, offset in back.items():
            consumer.seek(tp, offset)
        if back:
            log.debug("fetched records of paused partitions sought back: %s", ", ".join(
                f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in back.items()))
        return kept

    async def _highwaters(self, partitions: list[TP]) -> dict[TP, int]:
        # Faust's version returns `last_stable_offset`, unknown (None) for a partition not
        # fetched yet; `end_offsets` asks the broker, at the consumer's isolation level.
        consumer = faust_adapter.aiokafka_consumer(self)
        ends = await consumer.end_offsets(list(partitions))
        return {TP(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}


class _Consumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, with the fixes exactly-once needs (module docstring)."""

    _held: set[TP] | None = None
    _seeking: asyncio.Lock | None = None

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Resume changelog partitions now, stream partitions only after the next seek.

        Faust's recovery resumes the stream partitions and *then* seeks them to their
        committed offsets (`Recovery._resume_streams`, `.on_recovery_completed`); what
        is fetched in between is handled, and around the seek records were delivered
        again or not at all (see the module docstring).
        """
        tps = set(tps)
        changelogs = faust_adapter.changelog_topics(self.app.tables)
        streams = {tp for tp in tps if tp.topic not in changelogs}
        if streams:
            self._held = (self._held or set()) | streams
        super().resume_partitions(tps - streams)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, then resume the stream partitions held back when
        this seek began.

        Faust seeks from two places at a rebalance: its recovery, and `getmany` when it
        fetched while the flow was stopped; the two ran at once. The one that began before
        the hold released the partitions, records were handed on from the committed
        offsets, and the recovery's seek moved the positions back while they were being
        handed on, and records went missing from the batches. So the seeks run one at a
        time, and each resumes only what was held before it began.
        """
        if self._seeking is None:
            self._seeking = asyncio.Lock()
        async with self._seeking:
            held = set(self._held or ())
            await super().perform_seek()
            self._held = (self._held or set()) - held or None
            assigned = self.assignment()
            if held & assigned:
                super().resume_partitions(held & assigned)


def install(app: faust.App) -> None:
    """Make Faust build `ExactlyOnce` as its transaction manager, and `_Consumer`."""
    transport = cast(Any, app.transport)
    transport.TransactionManager = ExactlyOnce
    transport.Consumer = _Consumer


def manager(app: faust.App) -> ExactlyOnce:
    """The running consumer's transaction manager (after `install`)."""
    txns = cast(Any, app.consumer).transactions
    if not isinstance(txns, ExactlyOnce):
        raise TypeError(f"transaction manager is {type(txns).__name__}; install() first")
    return txns
