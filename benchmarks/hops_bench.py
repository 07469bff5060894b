"""Where an event's latency goes: the time each hop of one leadflow worker takes, per event.

One worker on isolated topics. `--leads` leads are identified first and processed; then
live activity of those leads is offered at `--rate` events/s for `--seconds` s
(`e2e_bench._produce_paced`, which stamps each input record with its send time), and the
run waits until every offset is committed. Then every topic of the path is read back and
each event is followed by its messageId through the records that carry it: the input
record, its line in an identity-topic envelope (written by ingest), in a leads-topic
envelope (stitch), the assign command of an alert it triggered (score) and that alert on
its team's routing topic (assign). A record's timestamp is when the stage appended it to
its producer, so each hop is the previous record's trip to the broker, the fetch, the
batch's wait and the stage's work (`figures.hop_delays`; nearest-rank quantiles).

    python benchmarks/hops_bench.py [--rate 1000] [--seconds 20] [--leads 5000] [--json]

Uses the configured cluster (LEADFLOW_BOOTSTRAP_SERVERS) or starts a local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import (
    ROOT,
    SOURCES,
    Offsets,
    Run,
    _cpu_s,
    _produce_all,
    _produce_paced,
    _runqueue_s,
    _stop,
    leadflow_env,
    read_to_end,
    team_topics,
)
from figures import first_stamps, hop_delays, quantiles
from state_bench import INTERNAL, _spawn, _until_ready
from traffic import generate

from pipeline.devkafka.ports import free_port
from pipeline.kafka.topics import TopicSpec, ensure_topics
from pipeline.stream.codec import CONTROL_PREFIXES, unpack

#: The stages in the order an alerting event passes them (each names the record it writes).
CHAIN = ("input", "identity", "leads", "assign", "routing")

Parse = Callable[[bytes], Iterator[str | None]]


def _input_id(value: bytes) -> Iterator[str | None]:
    body = orjson.loads(value)
    yield body.get("messageId") if isinstance(body, dict) else None


def _envelope_ids(value: bytes) -> Iterator[str | None]:
    for line in unpack(value):
        if not line.startswith(CONTROL_PREFIXES):  # tick and owner requests carry no event
            yield orjson.loads(line).get("m")


def _assign_trigger(value: bytes) -> Iterator[str | None]:
    cmd = orjson.loads(value)
    if cmd.get("op") == "alert":
        yield (cmd["alert"].get("trigger") or {}).get("message_id")


def _alert_trigger(value: bytes) -> Iterator[str | None]:
    alert = orjson.loads(value)
    if not alert.get("reassigned"):  # an SLA re-send is not the first alert
        yield (alert.get("trigger") or {}).get("message_id")


async def _stamps(bootstrap: str, choose: Callable[[Any], Iterable[str]],
                  parse: Parse, timeout_s: float = 60.0) -> dict[str, int]:
    """{message id: earliest timestamp} over every record of the topics `choose` picks."""
    records, complete = await read_to_end(bootstrap, choose, timeout_s)
    if not complete:
        raise TimeoutError(f"topics not read to their end in {timeout_s:.0f} s")
    return first_stamps((mid, r.timestamp) for r in records for mid in parse(r.value))


def _these(topics: Iterable[str]) -> Callable[[Any], list[str]]:
    return lambda _cluster: list(topics)


async def _caught_up(offsets: Offsets, group: str, topics: list[str], timeout_s: float,
                     proc: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}")
        done, end = await offsets.status(group, topics)
        if end > 0 and done >= end:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not caught up after {timeout_s:.0f} s: committed/end "
                               f"{', '.join(offsets.behind)}")
        await asyncio.sleep(0.25)


def _figures(delays: list[float]) -> dict[str, float | int | None]:
    qs = quantiles(delays, (0.5, 0.99, 1.0))
    if qs is None:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"n": len(delays), "p50_ms": qs[0], "p99_ms": qs[1], "max_ms": qs[2]}


async def hops_bench(bootstrap: str, *, rate: float, seconds: float, leads: int = 5000,
                     partitions: int = 4, timeout_s: float = 300.0,
                     seed: int = 7) -> dict[str, Any]:
    prefix = f"hops-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = ROOT / ".leadflow" / "bench" / prefix
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(bootstrap, prefix, leads, leads, rate, seconds, partitions, workdir, timeout_s,
              0.0)
    run.inputs = {s: f"{prefix}.events.{s}" for s in SOURCES}
    group = f"{prefix}-leadflow"
    load_start = os.getloadavg()
    now_ms = int(time.time() * 1000)
    await ensure_topics(bootstrap, [TopicSpec(t, partitions, 1, {})
                                    for t in run.inputs.values()])
    await _produce_all(bootstrap, generate(leads, leads, seed=seed,
                                           start_ms=now_ms - 3_600_000, end_ms=now_ms),
                       run.inputs)
    port = free_port()
    proc = _spawn(leadflow_env(run, group, port, workdir / "home"), workdir / "worker.log")
    internal = {t: f"{group}-{t}" for t in INTERNAL}
    topics = [*run.inputs.values(), *internal.values()]
    result: dict[str, Any] = {"rate": rate, "seconds": seconds, "leads": leads,
                              "partitions": partitions, "prefix": prefix}
    try:
        await _until_ready(port, proc, timeout_s)
        async with Offsets(bootstrap) as offsets:
            await _caught_up(offsets, group, topics, timeout_s, proc)
            t_lat_ms = int(time.time() * 1000)
            cpu0, wait0 = _cpu_s(proc.pid), _runqueue_s(proc.pid)
            # Another seed than the identifies': the same one repeats some messageIds,
            # and the worker drops those events as repeats.
            took = await _produce_paced(bootstrap, int(rate * seconds), leads, rate,
                                        run.inputs, seed + 1)
            await _caught_up(offsets, group, topics, timeout_s, proc)
            cpu1, wait1 = _cpu_s(proc.pid), _runqueue_s(proc.pid)
        inputs = {m: ts for m, ts in
                  (await _stamps(bootstrap, _these(run.inputs.values()), _input_id)).items()
                  if ts >= t_lat_ms}
        stamps = {
            "input": inputs,
            "identity": await _stamps(bootstrap, _these([internal["identity"]]),
                                      _envelope_ids),
            "leads": await _stamps(bootstrap, _these([internal["leads"]]), _envelope_ids),
            "assign": await _stamps(bootstrap, _these([internal["assign"]]), _assign_trigger),
            "routing": await _stamps(bootstrap, team_topics(f"{prefix}.routing."),
                                     _alert_trigger),
        }
        # Only the latency phase's events (the identifies before it are left out).
        stamps = {k: {m: ts for m, ts in v.items() if m in inputs} for k, v in stamps.items()}
        delays = hop_delays(stamps, CHAIN)
        result.update({
            "offered_s": round(took, 1),
            "offered_per_s": round(int(rate * seconds) / took) if took > 0 else None,
            "events": len(inputs),
            # The worker's CPU over the paced phase and its drain: a hop waits for the
            # event loop while the others' batches run, so this bounds every hop.
            "worker_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
            "events_per_cpu_s": (None if cpu0 is None or cpu1 is None or cpu1 <= cpu0
                                 else round(len(inputs) / (cpu1 - cpu0))),
            # seconds its threads waited for a core meanwhile (the machine's share)
            "worker_runqueue_s": (None if wait0 is None or wait1 is None
                                  else round(wait1 - wait0, 2)),
            "alerts": len(stamps["routing"]),
            # every event, input to its leads-topic line: what every event pays
            "input>leads": _figures(hop_delays(stamps, CHAIN[:3])["input>leads"]),
            "hops": {k: _figures(v) for k, v in delays.items()},
        })
    finally:
        _stop(proc)
    result["machine"] = {"nproc": os.cpu_count(), "python": platform.python_version()}
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long")
    ap.add_argument("--leads", type=int, default=5000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    from pipeline.devkafka.local import ensure_local_broker
    from pipeline.settings import Settings

    settings = Settings()
    bootstrap = settings.bootstrap_servers or ensure_local_broker(settings)
    res = asyncio.run(hops_bench(bootstrap, rate=args.rate, seconds=args.seconds,
                                 leads=args.leads, partitions=args.partitions))
    if args.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        if k == "hops":
            for hop, f in v.items():
                print(f"  {hop:<22} n={f['n']:<6} p50={f['p50_ms']} p99={f['p99_ms']} "
                      f"max={f['max_ms']} ms")
        else:
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
