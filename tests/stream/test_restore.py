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

from tests.support.reliability import (
    alert_ids,
    events_per_lead,
    judge,
    make_isolated,
    messages,
    produce,
    reference,
    report,
    seen_order,
    settled,
    stage_changes,
)
from tests.support.stores import expected_tables, stored_tables, tamper
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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
