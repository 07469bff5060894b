"""What the reliability tests share: generated traffic, the offline reference, reading outputs.

The reference is the pure core run offline. Two orders matter (see `reference`):
- the generator's order, stitched by hand (anonymousId -> userId): scores and events_seen do
  not depend on the order of a lead's events across input topics, so they must be exact;
- the order in which the score agent actually saw each lead's events, read back from the
  internal `<app>-leads` topic (first occurrence of each messageId): stage moves do depend on
  it (e.g. "Lead Accepted" on events.crm before "Demo Requested" on events.web is refused),
  so the stage and the stage changes are compared with the core run in *that* order.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.alerts import topic_partitions
from pipeline.core.engine import apply
from pipeline.core.outputs import AlertTrigger, RoutingDecision, StageMove
from pipeline.core.rules import load_default_rules
from pipeline.core.state import LeadState
from pipeline.models.events import parse_message
from pipeline.simulator import Message, generate
from pipeline.stream import dedup
from pipeline.stream.codec import CONTROL_PREFIXES, decode_event, unpack
from pipeline.stream.leadview import lead_document
from pipeline.stream.stages.records import LeadRecord
from tests.support.workers import TEAMS, Isolated, WorkerProcess
from tests.support.workers import make_isolated as _make_isolated

# Worker environment for these tests. The generated events are from 2026-01 (in the past:
# no future-skew rejection) and span one hour, far inside the 7-day dedup window. The decay
# and SLA timers run on the wall clock, so they would recycle every lead and escalate every
# alert of January at once: they are pushed out of the test's reach (the reference is the
# event-driven core). A SIGKILLed member leaves the group only when its session expires, so
# the session is short (faust reads these BROKER_* variables itself). The worker's clock is
# fixed on a weekday morning after those events: the shipped emea team keeps Berlin office
# hours, and at night its alerts would wait for the opening instead of being placed.
WORKER_ENV = {
    "LEADFLOW_CLOCK_START": "2026-01-07T10:00:00+00:00",
    "LEADFLOW_DECAY_CHECK_INTERVAL_S": "36000",
    "LEADFLOW_SLA_CHECK_INTERVAL_S": "36000",
    "BROKER_SESSION_TIMEOUT": "6",
    "BROKER_HEARTBEAT_INTERVAL": "1",
    "BROKER_REBALANCE_TIMEOUT": "20",
}


async def make_isolated(bootstrap: str, home: Path, *, partitions: int = 4,
                        replication_factor: int = 1,
                        extra_env: dict[str, str] | None = None) -> Isolated:
    """Isolated settings (unique app id and topics, created) with `WORKER_ENV`."""
    return await _make_isolated(bootstrap, home, partitions=partitions,
                                replication_factor=replication_factor,
                                extra_env={**WORKER_ENV, **(extra_env or {})})


def messages(visitors: int, seed: int) -> list[Message]:
    """A fixed event set from the simulator (fixed event times, 2026-01-01)."""
    return list(generate(visitors, seed=seed))


async def produce(producer: AIOKafkaProducer, iso: Isolated, msgs: list[Message]) -> None:
    """Send to the input topic of each message's source, keyed as the simulator keys them."""
    t = iso.settings.topics
    topic = {"web": t.web, "email": t.email, "product": t.product, "crm": t.crm}
    futs = [await producer.send(topic[m.source], m.value(), key=m.key.encode()) for m in msgs]
    await asyncio.gather(*futs)


Move = tuple[str, str, str, str | None]  # lead, from, to, cause messageId


@dataclass
class Reference:
    """Per identified lead: the order-independent part and what the seen order gives."""

    scores: dict[str, dict[str, float]]  # generator order
    events: dict[str, int]  # distinct messageIds per lead
    stage: dict[str, str]  # the order the score agent saw
    moves: list[Move]  # the order the score agent saw
    stage_if_generator_order: dict[str, str]
    #: Ids of the alerts (routing.<team>) and hand-offs (routing.nurture/recycle/review) the core
    #: raises in the order the score agent saw; stable and each raised once, so each must
    #: arrive once.
    alerts: list[str]


def _stitched(msgs: list[Message]) -> list[tuple[str, Any]]:
    users = {m.body["anonymousId"]: m.body["userId"] for m in msgs
             if m.body.get("userId") and m.body.get("anonymousId")}
    out = []
    for m in msgs:
        lead = m.body.get("userId") or users.get(m.body.get("anonymousId", ""))
        if lead is None:
            continue  # never identified: stays in the identity buffer, never scored
        out.append((lead, replace(parse_message(m.value(), source=m.source), lead_id=lead)))
    return out


def _handoff_id(o: RoutingDecision) -> str:
    # The id `stream.stages.score.plan` gives a nurture/recycle hand-off.
    return f"{o.lead_id}:{o.route}:{o.message_id or o.at_ms}"


def _run(ordered: list[tuple[str, Any]]
         ) -> tuple[dict[str, LeadState], list[Move], list[str]]:
    rules = load_default_rules()
    states: dict[str, LeadState] = {}
    moves: list[Move] = []
    alerts: list[str] = []
    for lead, e in ordered:
        res = apply(states.get(lead), e, rules)
        states[lead] = res.state
        for o in res.outputs:
            if isinstance(o, StageMove):
                moves.append((o.lead_id, o.from_stage, o.to_stage, o.cause_message_id))
            elif isinstance(o, AlertTrigger):
                alerts.append(o.alert_id)
            elif isinstance(o, RoutingDecision):
                alerts.append(_handoff_id(o))
    twice = sorted(k for k, n in Counter(alerts).items() if n > 1)
    if twice:
        # a consumer would see one id with two contents: a core bug, not the stream's
        raise AssertionError(f"the core raised these alert/hand-off ids more than once: {twice}")
    return states, moves, alerts


def _doc(lead: str, s: LeadState) -> dict[str, Any]:
    return lead_document(lead, {"s": s.to_dict(), "seen": {}}, load_default_rules())


def events_per_lead(msgs: list[Message]) -> dict[str, int]:
    """Distinct events of each identified lead: its events_seen once all are scored."""
    return dict(Counter(lead for lead, _ in _stitched(msgs)))


def reference(msgs: list[Message], seen_order: list[tuple[str, Any]]) -> Reference:
    gen_states, _, _ = _run(_stitched(msgs))
    seen_states, moves, alerts = _run(seen_order)
    return Reference(
        scores={k: _doc(k, s)["scores"] for k, s in gen_states.items()},
        events=events_per_lead(msgs),
        stage={k: _doc(k, s)["stage"] for k, s in seen_states.items()},
        moves=moves,
        stage_if_generator_order={k: _doc(k, s)["stage"] for k, s in gen_states.items()},
        alerts=alerts,
    )


async def read_all(bootstrap: str, topics: list[str], *, idle_s: float = 3.0,
                   timeout: float = 60.0, read_committed: bool = False) -> list[Any]:
    """Every record of `topics` from the start, until nothing new came for `idle_s`."""
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False,
                         isolation_level="read_committed" if read_committed else
                         "read_uncommitted")
    await c.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            batch = await c.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
                last = time.monotonic()
    finally:
        await c.stop()
    out.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return out


async def seen_order(iso: Isolated, *, read_committed: bool = False
                     ) -> tuple[list[tuple[str, Any]], int]:
    """Each lead's events in the order the score agent applied them (first occurrences),
    and how many events were forwarded to it more than once (replays after a crash)."""
    recs = await read_all(iso.bootstrap, [f"{iso.env['LEADFLOW_APP_ID']}-leads"],
                          read_committed=read_committed)
    done: set[tuple[str, str]] = set()
    order = []
    replayed = 0
    for r in recs:
        for line in unpack(r.value or b""):
            if line.startswith(CONTROL_PREFIXES):
                continue
            e = decode_event(line)
            replayed += (e.lead_id, e.message_id) in done
            if (e.lead_id, e.message_id) not in done:
                done.add((e.lead_id, e.message_id))
                order.append((e.lead_id, e))
    return order, replayed


async def reread_inputs(iso: Isolated, *, read_committed: bool = False) -> dict[str, int]:
    """Per internal hop (`identity`: ingest -> stitch, `leads`: stitch -> score), how many
    events were forwarded again after a first time: a worker killed between forwarding a
    batch and committing its input offsets reads those inputs again and forwards them once
    more. More than zero proves that a kill landed inside a batch."""
    app = iso.env["LEADFLOW_APP_ID"]
    out = {}
    for hop in ("identity", "leads"):
        seen: set[str] = set()
        again = 0
        for r in await read_all(iso.bootstrap, [f"{app}-{hop}"], read_committed=read_committed):
            for line in unpack(r.value or b""):
                if line.startswith(CONTROL_PREFIXES):
                    continue
                mid = decode_event(line).message_id
                again += mid in seen
                seen.add(mid)
        out[hop] = again
    return out


async def stage_changes(iso: Isolated, *, read_committed: bool = False) -> list[Move]:
    recs = await read_all(iso.bootstrap, [iso.settings.topics.stage_changes],
                          read_committed=read_committed)
    moves = []
    for r in recs:
        d = orjson.loads(r.value)
        if d.get("status", "applied") == "applied":
            moves.append((d["lead_id"], d["from_stage"], d["to_stage"],
                          (d.get("cause") or {}).get("message_id")))
    return moves


def transactional_topics(iso: Isolated) -> list[str]:
    """Every topic the worker writes in its transactions: internal, changelogs, outputs."""
    t = iso.settings.topics
    app = iso.env["LEADFLOW_APP_ID"]
    return [*(f"{app}-{name}" for name in ("identity", "leads", "assign")),
            *(f"{app}-{table}-changelog" for table in ("identity", "leads", "owners")),
            t.stage_changes, t.assignments, *(t.routing(team) for team in TEAMS),
            t.nurture, t.recycle, t.review]


async def aborted_records(iso: Isolated) -> int:
    """Records of aborted transactions on the internal topics, changelogs and outputs.

    Read once as a plain consumer sees them and once read_committed: the difference is
    what a killed worker wrote in transactions that never committed, i.e. proof that the
    kills landed inside open transactions.
    """
    topics = transactional_topics(iso)
    everything = await read_all(iso.bootstrap, topics)
    committed = await read_all(iso.bootstrap, topics, read_committed=True)
    return len(everything) - len(committed)


class OpenTransactions:
    """Whether a transaction that has written records is open on the worker's topics now.

    Such a partition's end offset as read_committed sees it (the last stable offset) is
    behind its end as a plain consumer sees it (the high watermark): a SIGKILL at that
    moment leaves records that the next owner's producer aborts.
    """

    def __init__(self, iso: Isolated) -> None:
        self._iso = iso
        self._plain = AIOKafkaConsumer(bootstrap_servers=iso.bootstrap,
                                       enable_auto_commit=False)
        self._committed = AIOKafkaConsumer(bootstrap_servers=iso.bootstrap,
                                           enable_auto_commit=False,
                                           isolation_level="read_committed")
        self._tps: list[Any] = []

    async def __aenter__(self) -> OpenTransactions:
        await self._plain.start()
        await self._committed.start()
        tps, missing = await topic_partitions(self._iso.bootstrap,
                                              transactional_topics(self._iso))
        assert not missing, missing
        self._tps = list(tps)
        await self.any_open()  # the first call fetches the partitions' metadata
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._plain.stop()
        await self._committed.stop()

    async def any_open(self) -> bool:
        stable, ends = await asyncio.gather(self._committed.end_offsets(self._tps),
                                            self._plain.end_offsets(self._tps))
        return any(stable[tp] < ends[tp] for tp in self._tps)


async def alert_ids(iso: Isolated, *, read_committed: bool = False) -> list[str]:
    """The alert id of every record on the teams' and the nurture/recycle/review topics."""
    t = iso.settings.topics
    recs = await read_all(iso.bootstrap, [*(t.routing(team) for team in TEAMS), t.nurture,
                                          t.recycle, t.review], read_committed=read_committed)
    return [str(orjson.loads(r.value)["alert_id"]) for r in recs]


async def lead_docs(worker: WorkerProcess, leads: list[str]) -> dict[str, Any]:
    """GET /leads/{id} for every lead (404 -> None), a few at a time."""
    sem = asyncio.Semaphore(16)

    async def one(s: aiohttp.ClientSession, lead: str) -> tuple[str, Any]:
        async with sem, s.get(worker.url(f"/leads/{lead}")) as r:
            return lead, orjson.loads(await r.read()) if r.status == 200 else None

    async with aiohttp.ClientSession() as s:
        return dict(await asyncio.gather(*(one(s, lead) for lead in leads)))


async def settled(worker: WorkerProcess, events: dict[str, int],
                  timeout: float = 120.0) -> dict[str, Any]:
    """Lead documents once every lead has seen its expected number of distinct events."""
    deadline = time.monotonic() + timeout
    docs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            docs = await lead_docs(worker, sorted(events))
        except aiohttp.ClientError:
            docs = {}
        if docs and all(d is not None and d["events_seen"] >= events[k]
                        for k, d in docs.items()):
            return docs
        await asyncio.sleep(1.0)
    behind = {k: (d or {}).get("events_seen") for k, d in docs.items()
              if d is None or d["events_seen"] < events[k]}
    try:  # where it stopped; the failure is reported whatever this finds
        found = f"{await group_lag(worker.iso)}\n{await where_behind(worker.iso, behind, events)}"
    except Exception as exc:
        found = f"(not diagnosed: {exc!r})"
    raise AssertionError(f"not settled: {len(behind)} leads behind, e.g. "
                         f"{list(behind.items())[:5]}\n{found}\n{worker.tail()}")


async def where_behind(iso: Isolated, behind: dict[str, Any], events: dict[str, int]) -> str:
    """For leads behind: their partition, how many distinct events reached the score agent
    (the leads topic, read committed) and how many the last changelog record counts."""
    app = iso.env["LEADFLOW_APP_ID"]
    part: dict[str, int] = {}
    got: dict[str, set[str]] = {}
    for r in await read_all(iso.bootstrap, [f"{app}-leads"], read_committed=True):
        for line in unpack(r.value or b""):
            if not line.startswith(CONTROL_PREFIXES):
                e = decode_event(line)
                part.setdefault(e.lead_id, r.partition)
                got.setdefault(e.lead_id, set()).add(e.message_id)
    logged: dict[str, Any] = {}
    for r in await read_all(iso.bootstrap, [f"{app}-leads-changelog"], read_committed=True):
        k = (r.key or b"").decode()
        if k in behind:
            logged[k] = (dedup.count(LeadRecord.decode(r.value).seen)
                         if r.value else "tombstone", r.partition, r.offset)
    return "behind (lead: expected, served, on leads topic, partition, changelog): " + "; ".join(
        f"{k}: {events[k]}, {v}, {len(got.get(k, ()))}, {part.get(k)}, {logged.get(k)}"
        for k, v in sorted(behind.items())[:20])


async def group_lag(iso: Isolated) -> str:
    """Each partition the app's groups read that they have not committed to its end: where
    a stalled pipeline stopped (group, topic[partition], committed offset, end offset)."""
    app = iso.env["LEADFLOW_APP_ID"]
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    c = AIOKafkaConsumer(bootstrap_servers=iso.bootstrap, isolation_level="read_committed")
    await c.start()
    lines = []
    try:
        for group in (app, f"{app}-ingest"):
            done = await admin.list_consumer_group_offsets(group)
            ends = await c.end_offsets(list(done)) if done else {}
            for tp in sorted(done, key=lambda tp: (tp.topic, tp.partition)):
                if done[tp].offset < ends[tp]:
                    lines.append(f"{group} {tp.topic}[{tp.partition}] committed "
                                 f"{done[tp].offset} end {ends[tp]}")
    finally:
        await c.stop()
        await admin.close()
    return "group lag: " + ("; ".join(lines) if lines else "none (every partition committed "
                                                            "to its end)")


@dataclass
class Verdict:
    lost: list[Move]
    unexpected: list[Move]
    duplicated: int
    emitted: int
    wrong_scores: list[str]
    wrong_events: list[str]
    wrong_stage: list[str]
    stage_order_dependent: int
    alerts_lost: list[str]
    alerts_unexpected: list[str]
    alerts_duplicated: int
    alerts_emitted: int


def judge(ref: Reference, docs: dict[str, Any], got: list[Move],
          alerts: list[str] | None = None) -> Verdict:
    count = Counter(got)
    expected = Counter(ref.moves)
    sent = Counter(alerts or [])
    want = Counter(ref.alerts) if alerts is not None else Counter()
    return Verdict(
        lost=sorted((expected - count).elements(), key=str),
        unexpected=sorted(set(count) - set(expected), key=str),
        duplicated=sum(n - 1 for n in count.values() if n > 1),
        emitted=len(got),
        wrong_scores=[k for k in ref.events if docs[k]["scores"] != ref.scores[k]],
        wrong_events=[k for k in ref.events if docs[k]["events_seen"] != ref.events[k]],
        wrong_stage=[k for k in ref.events if docs[k]["stage"] != ref.stage[k]],
        stage_order_dependent=sum(ref.stage[k] != ref.stage_if_generator_order[k]
                                  for k in ref.events),
        alerts_lost=sorted((want - sent).elements()),
        alerts_unexpected=sorted(set(sent) - set(want)),
        # the core raises each id once (`_run` checks), so every further copy is a duplicate
        alerts_duplicated=sum(n - 1 for n in sent.values() if n > 1),
        alerts_emitted=len(alerts or []),
    )


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """One line in the test output even without -s (CI logs)."""
    with capsys.disabled():
        sys.stdout.write(f"\n{line}\n")
        sys.stdout.flush()


async def lead_partitions(iso: Isolated, *, read_committed: bool = False) -> dict[str, int]:
    """The partition of the internal `<app>-leads` topic (and so of the leads table) that
    each lead's events went through."""
    recs = await read_all(iso.bootstrap, [f"{iso.env['LEADFLOW_APP_ID']}-leads"],
                          read_committed=read_committed)
    out: dict[str, int] = {}
    for r in recs:
        for line in unpack(r.value or b""):
            if not line.startswith(CONTROL_PREFIXES):
                out.setdefault(decode_event(line).lead_id, r.partition)
    return out


async def team_alert_times(iso: Isolated, *, read_committed: bool = False
                           ) -> list[tuple[str, float]]:
    """(lead id, record timestamp in epoch seconds) of every alert on the teams' topics."""
    t = iso.settings.topics
    recs = await read_all(iso.bootstrap, [t.routing(team) for team in TEAMS],
                          read_committed=read_committed)
    return [(str(orjson.loads(r.value)["lead_id"]), r.timestamp / 1000) for r in recs]


def takeover_s(killed_at: float, moved: set[int], partition_of: dict[str, int],
               alerts: list[tuple[str, float]]) -> tuple[float | None, int]:
    """Seconds from `killed_at` (epoch) to the first alert sent after it for a lead of a
    `moved` partition (None if there was none), and how many such alerts came after it."""
    after = sorted(ts for lead, ts in alerts
                   if ts > killed_at and partition_of.get(lead) in moved)
    return (after[0] - killed_at if after else None), len(after)
