"""Standby partitions followed in bulk between rebalances: one write batch per fetch.

Faust feeds a standby changelog partition through the same per-message recovery loop as
a restore (a task per message, a JSON decode, counters rebuilt per record), and applies a
table's records only once `standby_buffer_size` (1,000) of them are buffered, so a busy
standby falls behind its changelog and a quiet table's standby holds its last records in
memory indefinitely, its store (and its persisted offset) behind by as much. A timed
flush of Faust's buffers was the smaller change, but would only fix the quiet table: the
per-message loop runs on the worker's one event loop beside its own partitions' work and
cannot keep up with the changelog records of a few thousand events a second.

So the standby partitions of the RocksDB tables are taken out of Faust's recovery at each
assignment (it never seeks nor resumes them: Faust's consumer keeps them paused, as it
pauses every assigned partition at a rebalance) and followed here instead: a plain
aiokafka consumer of our own (read_committed under exactly-once, so records of aborted or
open transactions never reach the store) reads them with `getmany`, and each fetch of a
partition becomes one RocksDB write batch carrying the records and the persisted offset
(`tables.write_fetch`, as the bulk restore writes), so a standby's store is always a
prefix of its changelog up to the offset it records. On promotion to active, the bulk
restore and then Faust's recovery read on from that offset.

A standby must never write a partition this worker no longer holds as a standby: the
follower is stopped synchronously when a rebalance starts (`stop`, from Faust's
`on_partitions_revoked`, before any store closes or opens a partition), and every write
is preceded, with no await in between, by a check that its run is still the current one.
A failed fetch (the broker away) stops nothing: the follower starts over from what the
stores hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from pipeline.stream.tables import write_fetch

log = logging.getLogger(__name__)

#: Records per `getmany`: bounds one write batch; a fetch under live load is far smaller.
FETCH_RECORDS = 20_000
#: How long one `getmany` waits when nothing is there.
FETCH_WAIT_MS = 500
#: Wait before starting over after a failed fetch or consumer start.
RETRY_S = 2.0


@dataclass(frozen=True, slots=True)
class StandbyTarget:
    """One standby changelog partition of a table and its RocksDB store."""

    table: str
    store: Any  # Faust's RocksDB store of the table
    tp: TP


@dataclass(frozen=True, slots=True)
class StandbyPosition:
    """What a standby partition's store holds and the changelog end the follower saw."""

    #: Offset of the last changelog record (or control marker) the store holds; -1: none.
    stored: int
    #: The changelog's end offset (last stable offset under exactly-once) at the last
    #: fetch; None before one.
    end: int | None


@dataclass(slots=True)
class StandbyFollower:
    """Follows the standby partitions of one assignment into their stores."""

    bootstrap: str
    exactly_once: bool
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)
    _targets: dict[TopicPartition, StandbyTarget] = field(default_factory=dict)
    _run: int = 0
    _task: asyncio.Task[None] | None = None
    #: Stopped tasks still closing their consumer (the loop holds tasks only weakly).
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)
    _consumer: AIOKafkaConsumer | None = None

    def start(self, targets: Iterable[tuple[str, Any, TP]]) -> None:
        """Follow each (table name, store, changelog partition) of `targets` (the standbys
        of the assignment just made) until `stop`."""
        self.stop()
        self._targets = {TopicPartition(tp.topic, tp.partition): StandbyTarget(table, store, tp)
                         for table, store, tp in targets}
        if self._targets:
            self._task = asyncio.get_running_loop().create_task(
                self._follow(self._run, dict(self._targets)),
                name="leadflow-standby-follower")

    def stop(self) -> asyncio.Task[None] | None:
        """Stop following now: no write of the current run happens after this returns.

        Synchronous on purpose: called as a rebalance starts, before Faust's stores close
        the revoked partitions. Returns the stopping task (its consumer closes as it ends).
        """
        self._run += 1
        self._targets = {}
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        return task

    async def close(self) -> None:
        """Stop and wait for the consumer to close (the worker is stopping)."""
        task = self.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def positions(self) -> dict[str, dict[int, StandbyPosition]]:
        """Per table and standby partition followed now: stored offset and end seen."""
        consumer = self._consumer
        # Before its first assign, or a partition it does not follow (see `_read`).
        assigned = consumer.assignment() if consumer is not None else set()
        out: dict[str, dict[int, StandbyPosition]] = {}
        for ktp, t in sorted(self._targets.items()):
            stored = t.store.persisted_offset(t.tp)
            end = None
            if consumer is not None and ktp in assigned:
                end = (consumer.last_stable_offset(ktp) if self.exactly_once
                       else consumer.highwater(ktp))
            out.setdefault(t.table, {})[ktp.partition] = StandbyPosition(
                -1 if stored is None else int(stored), end)
        return out

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            **dict(self.client_kwargs),
        )

    async def _follow(self, run: int, targets: dict[TopicPartition, StandbyTarget]) -> None:
        while run == self._run:
            consumer = self._new_consumer()
            try:
                await consumer.start()
                self._consumer = consumer
                await self._read(run, consumer, targets)
                return  # stopped, or nothing left to follow
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("standby follower: %r; starting over from the stored offsets "
                            "in %.0f s", exc, RETRY_S)
            finally:
                if self._consumer is consumer:
                    self._consumer = None
                try:
                    await consumer.stop()
                except Exception as exc:  # the stores stand either way
                    log.warning("standby follower consumer did not stop cleanly: %r", exc)
            await asyncio.sleep(RETRY_S)

    async def _read(self, run: int, consumer: AIOKafkaConsumer,
                    targets: dict[TopicPartition, StandbyTarget]) -> None:
        begins = await consumer.beginning_offsets(list(targets))
        ends = await consumer.end_offsets(list(targets))
        if run != self._run:
            return
        written: dict[TopicPartition, int] = {}
        for ktp, t in targets.items():
            # Reading the offset opens the partition's database when nothing has yet.
            persisted = t.store.persisted_offset(t.tp)
            if persisted is not None and persisted >= ends[ktp]:
                # Past the changelog's end (topic recreated?): not followed, left for
                # Faust's consistency check to judge when the partition becomes active.
                log.warning("%s: persisted offset %d is not below the end offset %d; "
                            "standby not followed", ktp, persisted, ends[ktp])
                continue
            written[ktp] = -1 if persisted is None else int(persisted)
        tps = list(written)
        if not tps:
            return
        consumer.assign(tps)
        for ktp in tps:
            consumer.seek(ktp, max(begins[ktp], written[ktp] + 1))
        log.info("following standby partitions: %s", ", ".join(
            f"{targets[ktp].table}[{ktp.partition}] from {written[ktp] + 1}"
            for ktp in sorted(tps)))
        while run == self._run:
            fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS,
                                             max_records=FETCH_RECORDS)
            # The position also passes control records (commit markers) and aborted
            # records, which never come as records: what to persist is where it stands.
            positions = {ktp: await consumer.position(ktp) for ktp in tps}
            if run != self._run:
                return  # a rebalance began while fetching: these partitions may be gone
            for ktp, position in positions.items():
                if position - 1 > written[ktp]:
                    write_fetch(targets[ktp].store, ktp.partition, fetched.get(ktp, []),
                                position)
                    written[ktp] = position - 1
