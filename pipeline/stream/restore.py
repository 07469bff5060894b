"""Bulk changelog restore: a table partition's RocksDB rebuilt with one write batch per fetch.

Faust's own recovery hands every changelog record through its consumer, conductor and
recovery loop one at a time (a task per message, a JSON decode of a value RocksDB then
stores as raw bytes, counters rebuilt per record), which bounds a fresh worker to a few
thousand records a second. Here a plain aiokafka consumer of our own reads the assigned
changelog partitions with `getmany`, and each fetch becomes one RocksDB write batch per
partition (a put per record, a delete per tombstone) that also carries the persisted
offset, so records and offset land atomically. That offset is written under Faust's own
key and format (`RocksDB.offset_key`, the offset as ASCII digits: what
`set_persisted_offset` writes), so Faust's recovery, which starts from the persisted
offset, finds nothing left to replay and only reads what was written after the restore.

Where it hooks in: `Recovery.on_rebalance`, through a table manager whose recovery service
is `_Recovery` (Faust's `TableManager` setting). By then the tables' stores have opened
the databases of the new active partitions and the assignor knows the actives and
standbys, and this is the call that reads each partition's persisted offset to decide
where Faust's recovery starts: restoring just before it means Faust sees the offset we
wrote. The alternatives were worse: an `on_partitions_assigned` signal runs after that read
(Faust would replay everything again), and `value_type=bytes` tables only save the JSON
decode, not the per-message path.

The offset persisted is the consumer's position - 1, not the last record's offset: under
exactly-once the changelog ends with a transaction's commit marker, and Faust counts a
partition recovered at the last stable offset - 1 (see `transactions.MARKER`).

Exactly-once: the consumer reads `read_committed`, so records of aborted or open
transactions never reach the store and the end is the last stable offset, which is also
what Faust's recovery takes as the end (`transactions._Consumer.highwaters`).

Standby partitions are not restored here: right after the assignment they are taken out
of Faust's recovery and followed, from their persisted offsets, by
`standby.StandbyFollower` (the same write batches, in the background between rebalances),
so the rebalance callback waits for the active partitions only.

The cost of restoring inside the rebalance callback: the group's next rebalance waits for
it. A member that joins meanwhile holds the group until this worker rejoins, and past
`broker_rebalance_timeout` (Faust's default 60 s) the broker drops this worker from the
group; it rejoins, and the next restore goes on from the offsets stored so far. Faust's
recovery task was not the place instead: its steps run under `broker_request_timeout`,
and a step that outlasts it stops the recovery service for good (mode's `wait_first`
reports a timeout as the service stopped).

Anything that goes wrong in a bulk restore (the broker, a timeout, a newer rebalance) stops
it where it is, with every finished fetch already stored with its offset, and Faust's
recovery reads the rest: a failure costs time, never state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from pipeline.stream.standby import StandbyFollower
from pipeline.stream.tables import write_fetch

log = logging.getLogger(__name__)

#: Records per `getmany` call: large enough that a write batch amortises its cost, small
#: enough to bound a fetch's memory (values up to a few KiB).
FETCH_RECORDS = 20_000
#: How long one `getmany` waits for data before the positions are checked again. Short:
#: a partition whose changelog ends in commit markers only is done once its position
#: passes them, which no `getmany` reports (it returns records), so each wait is paid
#: in full by a takeover that has nothing left to restore.
FETCH_WAIT_MS = 50
#: A fetch that brings nothing for this long ends the restore (Faust's recovery goes on).
STALL_S = 30.0


@dataclass(slots=True)
class PartitionCount:
    """Records restored of the total planned for one table partition (live, not frozen:
    the restore updates it after each fetch and readers sample it)."""

    restored: int
    total: int


@dataclass(frozen=True, slots=True)
class _Plan:
    table: str
    store: Any  # Faust's RocksDB store of the table
    tp: TopicPartition
    start: int
    end: int


@dataclass(slots=True)
class BulkRestore:
    """Restores changelog partitions into their RocksDB stores; counts what it did."""

    bootstrap: str
    exactly_once: bool
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Per (table, partition) of the restore under way: restored of total.
    counts: dict[tuple[str, int], PartitionCount] = field(default_factory=dict)
    #: Called with (table, records) after each fetch is stored.
    on_restored: Callable[[str, int], None] | None = None
    #: Called once the totals are known and then every `progress_every_s` (`counts`).
    on_progress: Callable[[], None] | None = None
    progress_every_s: float = 5.0

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **dict(self.client_kwargs),
        )

    async def restore(self, targets: Iterable[tuple[str, Any, TP]],
                      current: Callable[[], bool]) -> dict[tuple[str, int], int]:
        """Restore each (table name, store, changelog partition) up to its end offset.

        `current` says whether the rebalance this runs for is still the latest; once it is
        not, the restore stops after the fetch in hand. Returns the records restored per
        (table, partition). Never raises (but for cancellation): what is left is Faust's.
        """
        targets = list(targets)
        if not targets:
            return {}
        consumer = self._consumer()
        done: dict[tuple[str, int], int] = {}
        try:
            await consumer.start()
            await self._run(consumer, targets, current, done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("bulk changelog restore stopped (%r); Faust's recovery reads the "
                        "rest from the offsets stored so far", exc)
        finally:
            self.counts.clear()
            try:
                await consumer.stop()
            except Exception as exc:  # the restore's result stands either way
                log.warning("bulk restore consumer did not stop cleanly: %r", exc)
        return done

    async def _plan(self, consumer: AIOKafkaConsumer,
                    targets: list[tuple[str, Any, TP]]) -> list[_Plan]:
        tps = [TopicPartition(tp.topic, tp.partition) for _, _, tp in targets]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        plans = []
        for (table, store, tp), ktp in zip(targets, tps, strict=True):
            persisted = store.persisted_offset(tp)
            start = max(begins[ktp], 0 if persisted is None else persisted + 1)
            end = ends[ktp]
            if persisted is not None and persisted >= end:
                # Past the changelog's end (topic recreated?): Faust's consistency check
                # is the one to judge it.
                log.warning("%s: persisted offset %d is not below the end offset %d; left "
                            "to Faust's recovery", tp, persisted, end)
                continue
            if start < end:
                plans.append(_Plan(table, store, ktp, start, end))
        return plans

    async def _run(self, consumer: AIOKafkaConsumer, targets: list[tuple[str, Any, TP]],
                   current: Callable[[], bool], done: dict[tuple[str, int], int]) -> None:
        plans = await self._plan(consumer, targets)
        if not plans:
            return
        by_tp = {p.tp: p for p in plans}
        for p in plans:
            consumer.seek(p.tp, p.start)
            self.counts[(p.table, p.tp.partition)] = PartitionCount(0, p.end - p.start)
        consumer.pause(*[tp for tp in consumer.assignment() if tp not in by_tp])
        t0 = time.monotonic()
        total = sum(p.end - p.start for p in plans)
        log.info("bulk restore of %d changelog records: %s", total, ", ".join(
            f"{p.table}[{p.tp.partition}] {p.start}..{p.end}" for p in plans))
        left = dict(by_tp)
        last_data = time.monotonic()
        reported = self._progress()
        while left:
            if not current():
                log.info("bulk restore stopped by a newer rebalance; %d partitions left "
                         "to Faust's recovery", len(left))
                return
            fetched = await consumer.getmany(*left, timeout_ms=FETCH_WAIT_MS,
                                             max_records=FETCH_RECORDS)
            if fetched:
                last_data = time.monotonic()
            for ktp, records in fetched.items():
                p = by_tp[ktp]
                self._write(p, records, await consumer.position(ktp))
                key = (p.table, ktp.partition)
                done[key] = done.get(key, 0) + len(records)
                self.counts[key].restored += len(records)
                if self.on_restored is not None:
                    self.on_restored(p.table, len(records))
            for ktp in list(left):
                # The position passes control records (commit markers) and aborted
                # records too, which never come as records: the end is where it stands.
                position = await consumer.position(ktp)
                if position >= left[ktp].end:
                    if ktp not in fetched:  # markers only since the last write
                        self._write(left[ktp], [], position)
                    consumer.pause(ktp)
                    del left[ktp]
            if left and time.monotonic() - last_data > STALL_S:
                log.warning("bulk restore: no data for %.0f s; %d partitions left to "
                            "Faust's recovery", STALL_S, len(left))
                return
            if time.monotonic() - reported >= self.progress_every_s:
                reported = self._progress()
            await asyncio.sleep(0)  # timers and web views run between fetches
        took = time.monotonic() - t0
        n = sum(done.values())
        log.info("bulk restore: %d changelog records in %.1f s (%.0f/s)", n, took,
                 n / took if took > 0 else 0.0)

    def _progress(self) -> float:
        if self.on_progress is not None:
            try:
                self.on_progress()
            except Exception:  # a report must never stop the restore
                log.exception("bulk restore progress report failed")
        return time.monotonic()

    @staticmethod
    def _write(p: _Plan, records: list[Any], position: int) -> None:
        write_fetch(p.store, p.tp.partition, records, position)


class _Recovery(Recovery):
    """Faust's recovery service, preceded by a bulk restore of the assigned active
    partitions; the standby partitions are followed by `standby.StandbyFollower`."""

    restorer: BulkRestore | None = None
    follower: StandbyFollower | None = None

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        app = self.app
        if self.restorer is not None and generation_id == app.consumer_generation_id:
            await self.restorer.restore(self._targets(app.assignor.assigned_actives()),
                                        lambda: (generation_id == app.consumer_generation_id
                                                 and not self.should_stop))
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.follower is not None and generation_id == app.consumer_generation_id:
            self._follow_standbys()

    def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Before any store closes or opens a partition of the coming assignment.
        if self.follower is not None:
            self.follower.stop()
        super().on_partitions_revoked(revoked)

    async def on_stop(self) -> None:
        if self.follower is not None:
            await self.follower.close()
        await super().on_stop()

    def _follow_standbys(self) -> None:
        """Take the RocksDB tables' standby partitions away from Faust's recovery (which
        then never seeks nor resumes them) and have the follower read them instead."""
        assert self.follower is not None
        targets = self._targets(self.app.assignor.assigned_standbys())
        for _, _, tp in targets:
            # In place: Faust's recovery task holds these very sets.
            self.standby_tps.discard(tp)
            self.standbys_for_table[self.tp_to_table[tp]].discard(tp)
            self.standby_offsets.pop(tp, None)
            self.standby_highwaters.pop(tp, None)
        self.follower.start(targets)

    def _targets(self, tps: Iterable[TP]) -> list[tuple[str, Any, TP]]:
        """Those of `tps` that are changelog partitions of RocksDB (rocksdict) tables."""
        tables = {t.changelog_topic.get_topic_name(): t for t in self.tables.values()}
        out: list[tuple[str, Any, TP]] = []
        for tp in sorted(tps):
            table = tables.get(tp.topic)
            if table is not None and getattr(table.data, "use_rocksdict", False):
                out.append((cast(str, table.name), table.data, tp))
        return out


class RestoringTableManager(TableManager):
    """Faust's table manager with `_Recovery` as its recovery service."""

    restorer: BulkRestore | None = None
    follower: StandbyFollower | None = None

    @property
    def recovery(self) -> Recovery:
        # Faust builds its recovery service lazily (at start) into `_recovery`; ours instead.
        if self._recovery is None:
            rec = _Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
            rec.restorer = self.restorer
            rec.follower = self.follower
            self._recovery = rec
        return self._recovery


def install(app: Any, restorer: BulkRestore, follower: StandbyFollower | None = None) -> None:
    """Have `app` (built with ``TableManager=RestoringTableManager``) restore its actives
    in bulk and, given a `follower`, follow its standbys with it."""
    tables = app.tables
    if not isinstance(tables, RestoringTableManager):
        raise TypeError("the app's table manager is not RestoringTableManager")
    tables.restorer = restorer
    tables.follower = follower
