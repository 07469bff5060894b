"""A fresh worker restores its tables from the changelogs in bulk, exactly, and scores on.

A first worker scores half of the traffic; the changelogs then also get keys overwritten,
a key deleted by a tombstone and, under exactly-once, an aborted transaction that writes a
new key and a wrong value for a real lead. A second worker with an empty state folder must
hold exactly the changelogs' last committed value of every key (read from its RocksDB), have
done so through the bulk restore (its counter, and Faust's own recovery having nothing left
to read), and then score the second half so that every lead ends as the offline reference.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from rocksdict import AccessType, Options, Rdict

from pipeline.kafka.topics import DEFAULT_TABLES
from pipeline.stream.keys import partition_for
from tests.support.reliability import (
    alert_ids,
    events_per_lead,
    judge,
    make_isolated,
    messages,
    produce,
    read_all,
    reference,
    report,
    seen_order,
    settled,
    stage_changes,
)
from tests.support.workers import Isolated, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps its persisted offset


def changelog(iso: Isolated, table: str) -> str:
    return f"{iso.env['LEADFLOW_APP_ID']}-{table}-changelog"


async def expected_tables(iso: Isolated, *, eos: bool
                          ) -> tuple[dict[tuple[str, int], dict[bytes, bytes]], int]:
    """The last value of every key per table partition, as a reader of the changelogs
    sees them (read_committed under exactly-once), and how many records that was."""
    topics = {changelog(iso, t): t for t in DEFAULT_TABLES}
    records = await read_all(iso.bootstrap, list(topics), read_committed=eos)
    out: dict[tuple[str, int], dict[bytes, bytes]] = {}
    for r in records:  # in offset order
        part = out.setdefault((topics[r.topic], r.partition), {})
        if r.value is None:
            part.pop(r.key, None)
        else:
            part[r.key] = r.value
    return out, len(records)


def stored_tables(home: Path, iso: Isolated) -> dict[tuple[str, int], dict[bytes, bytes]]:
    """Every key and value in a worker's RocksDB tables (read only: the worker may run)."""
    tables = home / "worker" / iso.env["LEADFLOW_APP_ID"] / "v1" / "tables"
    out: dict[tuple[str, int], dict[bytes, bytes]] = {}
    for table in DEFAULT_TABLES:
        for p in range(iso.settings.partitions):
            path = tables / f"{table}-{p}.db"
            if not path.exists():
                continue
            db = Rdict(str(path), options=Options(raw_mode=True),
                       access_type=AccessType.read_only())
            try:
                got = {bytes(k): bytes(v) for k, v in db.items() if k != OFFSET_KEY}
            finally:
                db.close()
            if got:
                out[(table, p)] = got
    return out


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


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_fresh_worker_restores_in_bulk_exactly_then_scores_on(
    kafka_bootstrap: str, tmp_path: Path, producer: AIOKafkaProducer,
    worker_factory: Callable[..., WorkerProcess], capsys: pytest.CaptureFixture[str],
    guarantee: str,
) -> None:
    eos = guarantee == "exactly_once"
    iso = await make_isolated(kafka_bootstrap, tmp_path / "home",
                              extra_env={"LEADFLOW_PROCESSING_GUARANTEE": guarantee})
    msgs = messages(200, 47)
    first, rest = msgs[:len(msgs) // 2], msgs[len(msgs) // 2:]
    w1 = worker_factory(iso)
    await w1.wait_ready()
    await produce(producer, iso, first)
    docs = await settled(w1, events_per_lead(first))
    assert w1.stop(signal.SIGTERM) == 0, w1.tail()

    real_lead = sorted(docs)[0].encode()
    keys = await tamper(iso, kafka_bootstrap, producer, eos=eos, real_lead=real_lead)
    want, n_records = await expected_tables(iso, eos=eos)
    leads = {k: v for (t, _), part in want.items() if t == "leads" for k, v in part.items()}
    assert keys["overwritten"] in leads and keys["deleted"] not in leads
    assert keys["aborted"] not in leads

    home2 = tmp_path / "home2"
    iso2 = copy.copy(iso)
    iso2.env = {**iso.env, "LEADFLOW_HOME": str(home2)}
    w2 = worker_factory(iso2)
    await w2.wait_ready()
    got = stored_tables(home2, iso)
    assert set(got) == set(want)
    for tp in sorted(want):
        assert got[tp] == want[tp], tp
    # ... through the bulk restore, every record once, and Faust's recovery read nothing
    assert await w2.metric("leadflow_changelog_restored_total") == n_records
    assert "Restoring state from changelog topics" not in w2.log_path.read_text()
    status, body = await w2.get(f"/leads/{keys['deleted'].decode()}")
    assert status == 404, body

    await produce(producer, iso, rest)
    docs = await settled(w2, events_per_lead(msgs))
    order, replayed = await seen_order(iso, read_committed=eos)
    ref = reference(msgs, order)
    v = judge(ref, docs, await stage_changes(iso, read_committed=eos),
              await alert_ids(iso, read_committed=eos))
    report(capsys, f"restore-test[{guarantee}]: changelog records={n_records} "
           f"keys={sum(len(p) for p in want.values())} events={len(msgs)} "
           f"leads={len(ref.events)} lost={len(v.lost)} duplicated={v.duplicated} "
           f"alerts lost={len(v.alerts_lost)} duplicated={v.alerts_duplicated}")
    assert not v.wrong_events and not v.wrong_scores, (v.wrong_events[:5], v.wrong_scores[:5])
    assert not v.wrong_stage, v.wrong_stage[:5]
    assert not v.lost and not v.unexpected, (v.lost[:10], v.unexpected[:10])
    assert not v.alerts_lost and not v.alerts_unexpected, (v.alerts_lost[:10],
                                                          v.alerts_unexpected[:10])
    if eos:
        assert v.duplicated == 0 and v.alerts_duplicated == 0 and replayed == 0
