"""How far a standby replica's table is behind its active partition under sustained load.

Two leadflow workers (standby replicas 1, each its own state folder) share isolated topics
with `--partitions` partitions. `--leads` leads are identified first (one identify each)
and processed; then live activity of those leads is offered at `--rate` events/s for
`--seconds` s (`e2e_bench._produce_paced`), and after it `--drain-s` s more are watched.
Every `--every-s` s the bench reads each worker's standby partitions from its `/readyz`
(`standbys`: the offset of the last changelog record the standby's store holds) and the
changelogs' end offsets from the broker. Per sample (`figures.standby_lags`): records
behind (end - 1 - stored) and seconds behind (the age of the standby's view: how long ago
the changelog was last no further than the store is now). Reported over the load phase:
max and nearest-rank p99 of both, over every standby partition of every table; and the
records still behind at the end of the drain; and the maxima per table. A worker that does
not answer a sample within 2 s is counted in `samples_missed` (that sample has no figure);
`sample_gap_s_max`, the longest time between two samples of a partition, is the resolution
of the seconds behind.

    python benchmarks/standby_bench.py [--rate 3000] [--seconds 40] [--json]

Uses the configured cluster (LEADFLOW_BOOTSTRAP_SERVERS) or starts a local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import (
    ROOT,
    SOURCES,
    Offsets,
    Run,
    _produce_all,
    _produce_paced,
    _stop,
    leadflow_env,
)
from figures import StandbySample, quantiles, standby_lags
from state_bench import INTERNAL, _get, _say, _spawn, _until_ready
from traffic import generate

from pipeline.devkafka.ports import free_port
from pipeline.kafka.topics import DEFAULT_TABLES, TopicSpec, ensure_topics

Key = tuple[str, int]  # table, partition


async def _standbys(port: int) -> dict[Key, int]:
    """table, partition -> stored offset of each standby partition the worker reports."""
    _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz", 2.0)
    out: dict[Key, int] = {}
    for table, parts in json.loads(body).get("standbys", {}).items():
        for partition, pos in parts.items():
            out[(table, int(partition))] = int(pos["stored"])
    return out


def _tails(workdir: Path, lines: int = 8) -> str:
    """The last warnings and errors of each worker's log, for a failure seen only in CI."""
    out = []
    for log in sorted(workdir.glob("worker-*.log")):
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", log.read_text(errors="replace"))
        found = [ln.strip()[:300] for ln in text.splitlines()
                 if "[WARNING]" in ln or "[ERROR]" in ln]
        out.append(f"{log.name}: " + (" | ".join(found[-lines:]) or "none"))
    return "; ".join(out)


async def _own_lag(port: int) -> str:
    """The partitions a worker itself reports behind (its `leadflow_consumer_lag` > 0): a
    commit it believes made but the broker lacks shows here as no lag."""
    try:
        _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics", 2.0)
    except OSError as exc:
        return f"{port}: {exc!r}"
    lines = [ln for ln in body.decode(errors="replace").splitlines()
             if ln.startswith("leadflow_consumer_lag{")
             and not ln.endswith((" 0", " 0.0"))]
    return f"{port}: " + (" ".join(lines) or "none")


async def standby_bench(bootstrap: str, *, rate: float, seconds: float, leads: int = 5000,
                        partitions: int = 4, every_s: float = 0.25, drain_s: float = 10.0,
                        timeout_s: float = 600.0, seed: int = 7) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    prefix = f"standby-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = ROOT / ".leadflow" / "bench" / prefix
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(bootstrap, prefix, leads, leads, rate, 0.0, partitions, workdir, timeout_s, 0.0)
    run.inputs = {s: f"{prefix}.events.{s}" for s in SOURCES}
    group = f"{prefix}-leadflow"
    load_start = os.getloadavg()
    now_ms = int(time.time() * 1000)
    await ensure_topics(bootstrap, [TopicSpec(t, partitions, 1, {})
                                    for t in run.inputs.values()])
    await _produce_all(bootstrap, generate(leads, leads, seed=seed,
                                           start_ms=now_ms - 3_600_000, end_ms=now_ms),
                       run.inputs)
    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        env = {**leadflow_env(run, group, port, workdir / f"home-{i + 1}"),
               "LEADFLOW_STANDBY_REPLICAS": "1"}
        procs.append(_spawn(env, workdir / f"worker-{i + 1}.log"))
    changelogs = [f"{group}-{t}-changelog" for t in DEFAULT_TABLES]
    tps = [TopicPartition(t, p) for t in changelogs for p in range(partitions)]
    ends_of = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                               enable_auto_commit=False)
    result: dict[str, Any] = {"rate": rate, "seconds": seconds, "leads": leads,
                              "partitions": partitions, "prefix": prefix}
    try:
        for port, proc in zip(ports, procs, strict=True):
            await _until_ready(port, proc, timeout_s)
        # Wait until the identifies are processed and each worker holds its standbys (all
        # partitions of every table between the two), so the load meets a settled group.
        deadline = time.monotonic() + timeout_s
        async with Offsets(bootstrap) as offsets:
            topics = [*run.inputs.values(), *(f"{group}-{t}" for t in INTERNAL)]
            while True:
                done, end = await offsets.status(group, topics)
                holding = [await _standbys(port) for port in ports]
                if (end > 0 and done >= end and all(holding) and len(
                        set(holding[0]) | set(holding[1])) == len(DEFAULT_TABLES) * partitions):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"not settled after {timeout_s:.0f} s: committed/end "
                        f"{', '.join(offsets.behind) or 'all done'}; standbys {holding}; "
                        f"lag the workers report: {[await _own_lag(p) for p in ports]}; "
                        f"worker logs: {_tails(workdir)}")
                await asyncio.sleep(0.5)
        _say(f"{leads:,} leads identified; offering {rate:,.0f} events/s for {seconds:.0f} s")
        await ends_of.start()
        samples: dict[Key, list[StandbySample]] = {}
        missed: list[str] = []
        t0 = time.monotonic()
        producing = asyncio.create_task(_produce_paced(
            # seed + 1: with the identifies' seed some messageIds repeat (dropped as repeats)
            bootstrap, int(rate * seconds), leads, rate, run.inputs, seed + 1))
        load_end: float | None = None
        while True:
            now = time.monotonic()
            if producing.done() and load_end is None:
                load_end = now
                producing.result()  # a failed producer fails the bench
            if load_end is not None and now - load_end >= drain_s:
                break
            if now - t0 > timeout_s:
                raise TimeoutError(f"load not done after {timeout_s:.0f} s")
            # The end offsets and both workers' stores at once: samples far apart (a
            # busy machine) would make any lag read as the time between them.
            ends, *views = await asyncio.gather(
                ends_of.end_offsets(tps), *(_standbys(port) for port in ports),
                return_exceptions=True)
            if isinstance(ends, BaseException):
                raise ends
            at = time.monotonic() - t0
            for port, held in zip(ports, views, strict=True):
                if isinstance(held, TimeoutError | OSError):
                    # A worker too busy to answer within the sample's timeout: the sample
                    # is missing (counted in the result), not a lag of zero.
                    missed.append(f"{port}: {held!r}")
                    continue
                if isinstance(held, BaseException):
                    raise held
                for (table, partition), stored in held.items():
                    end = ends[TopicPartition(f"{group}-{table}-changelog", partition)]
                    samples.setdefault((table, partition), []).append(
                        StandbySample(at, end, stored))
            await asyncio.sleep(every_s)
        load_s = (load_end or time.monotonic()) - t0
        during: list[tuple[int, float]] = []
        last: list[int] = []
        by_table: dict[str, dict[str, float]] = {}
        for (table, _), series in samples.items():
            lags = standby_lags(series)
            mine = [lag for s, lag in zip(series, lags, strict=True) if s.at_s <= load_s]
            during += mine
            last.append(lags[-1][0])
            t = by_table.setdefault(table, {"records_max": 0, "s_max": 0.0})
            t["records_max"] = max(t["records_max"], *(r for r, _ in mine), 0)
            t["s_max"] = round(max(t["s_max"], *(x for _, x in mine), 0.0), 2)
        records = [float(r) for r, _ in during]
        secs = [s for _, s in during]
        p99_r = quantiles(records, [0.99])
        p99_s = quantiles(secs, [0.99])
        result.update({
            "offered_s": round(load_s, 1),
            # what the producer reached (below --rate when the machine is too busy)
            "offered_per_s": round(int(rate * seconds) / load_s) if load_s > 0 else None,
            "samples": len(during),
            "samples_missed": len(missed),
            # the resolution of the seconds behind: the longest time between two samples
            "sample_gap_s_max": round(max(
                (b.at_s - a.at_s for series in samples.values()
                 for a, b in itertools.pairwise(series) if b.at_s <= load_s), default=0.0), 2),
            "standby_partitions": sorted(f"{t}[{p}]" for t, p in samples),
            "standby_lag_records_max": int(max(records, default=0)),
            "standby_lag_records_p99": None if p99_r is None else int(p99_r[0]),
            "standby_lag_s_max": round(max(secs, default=0.0), 2),
            "standby_lag_s_p99": None if p99_s is None else round(p99_s[0], 2),
            "standby_lag_records_after_drain": int(max(last, default=0)),
            "standby_lag_by_table": by_table,
        })
    finally:
        await ends_of.stop()
        for proc in procs:
            _stop(proc)
    result["machine"] = {"nproc": os.cpu_count(), "python": platform.python_version()}
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=3000.0, help="events/s offered")
    ap.add_argument("--seconds", type=float, default=40.0, help="how long")
    ap.add_argument("--leads", type=int, default=5000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    from pipeline.devkafka.local import ensure_local_broker
    from pipeline.settings import Settings

    settings = Settings()
    bootstrap = settings.bootstrap_servers or ensure_local_broker(settings)
    res = asyncio.run(standby_bench(bootstrap, rate=args.rate, seconds=args.seconds,
                                    leads=args.leads, partitions=args.partitions))
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
