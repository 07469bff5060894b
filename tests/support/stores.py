"""A worker's RocksDB tables and their changelogs, read the way the tests compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from rocksdict import AccessType, Options, Rdict

from pipeline.kafka.topics import DEFAULT_TABLES
from pipeline.stream.keys import partition_for
from tests.support.reliability import read_all
from tests.support.workers import Isolated

OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps its persisted offset

Part = tuple[str, int]  # table, partition


def changelog(iso: Isolated, table: str) -> str:
    return f"{iso.env['LEADFLOW_APP_ID']}-{table}-changelog"


def last_values(records: list[Any], topics: dict[str, str],
                upto: dict[Part, int] | None = None) -> dict[Part, dict[bytes, bytes]]:
    """The last value of every key per table partition of `records` (in offset order; a
    tombstone deletes), only records at or below `upto`'s offset where it names one."""
    out: dict[Part, dict[bytes, bytes]] = {}
    for r in records:
        tp = (topics[r.topic], r.partition)
        if upto is not None and tp in upto and r.offset > upto[tp]:
            continue
        part = out.setdefault(tp, {})
        if r.value is None:
            part.pop(r.key, None)
        else:
            part[r.key] = r.value
    return out


async def changelog_records(iso: Isolated, *, eos: bool) -> tuple[list[Any], dict[str, str]]:
    """Every record of the tables' changelogs (read_committed under exactly-once), and the
    table of each changelog topic."""
    topics = {changelog(iso, t): t for t in DEFAULT_TABLES}
    return await read_all(iso.bootstrap, list(topics), read_committed=eos), topics


async def expected_tables(iso: Isolated, *, eos: bool
                          ) -> tuple[dict[Part, dict[bytes, bytes]], int]:
    """The last value of every key per table partition, as a reader of the changelogs
    sees them (read_committed under exactly-once), and how many records that was."""
    records, topics = await changelog_records(iso, eos=eos)
    return last_values(records, topics), len(records)


def stored_partitions(home: Path, iso: Isolated
                      ) -> dict[Part, tuple[int | None, dict[bytes, bytes]]]:
    """Each RocksDB table partition of a worker: its persisted offset and every other key
    and value, both from one read-only open (the worker may be writing meanwhile)."""
    tables = home / "worker" / iso.env["LEADFLOW_APP_ID"] / "v1" / "tables"
    out: dict[Part, tuple[int | None, dict[bytes, bytes]]] = {}
    for table in DEFAULT_TABLES:
        for p in range(iso.settings.partitions):
            path = tables / f"{table}-{p}.db"
            if not path.exists():
                continue
            db = Rdict(str(path), options=Options(raw_mode=True),
                       access_type=AccessType.read_only())
            try:
                items = {bytes(k): bytes(v) for k, v in db.items()}
            finally:
                db.close()
            offset = items.pop(OFFSET_KEY, None)
            out[(table, p)] = (None if offset is None else int(offset), items)
    return out


def stored_tables(home: Path, iso: Isolated) -> dict[Part, dict[bytes, bytes]]:
    """Every key and value in a worker's RocksDB tables, partitions holding none left out."""
    return {tp: items for tp, (_, items) in stored_partitions(home, iso).items() if items}


async def tamper(iso: Isolated, bootstrap: str, producer: AIOKafkaProducer, *, eos: bool,
                 real_lead: bytes) -> dict[str, bytes]:
    """Overwrites, a tombstone and (exactly-once) an aborted transaction on the leads
    changelog; the synthetic keys by what must become of them."""
    topic = changelog(iso, "leads")
    parts = iso.settings.partitions
    recs = await read_all(bootstrap, [topic], read_committed=eos)
    values = [r.value for r in recs if r.value is not None]
    real_value = next(r.value for r in reversed(recs) if r.key == real_lead)
    keys = {"overwritten": b"restore-overwritten", "deleted": b"restore-deleted",
            "aborted": b"restore-aborted"}
    writes = [(keys["overwritten"], values[0]), (keys["deleted"], values[1]),
              (keys["overwritten"], values[-1]), (keys["deleted"], None)]
    if not eos:
        for key, value in writes:
            await producer.send_and_wait(topic, value, key=key,
                                         partition=partition_for(key, parts))
        return keys
    tx = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-test")
    await tx.start()
    try:
        async with tx.transaction():
            for key, value in writes:
                await tx.send(topic, value, key=key, partition=partition_for(key, parts))
        await tx.begin_transaction()
        wrong = next(v for v in values if v != real_value)
        for key, value in [(keys["aborted"], values[0]), (real_lead, wrong)]:
            await (await tx.send(topic, value, key=key, partition=partition_for(key, parts)))
        await tx.abort_transaction()
    finally:
        await tx.stop()
    return keys
