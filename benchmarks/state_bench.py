"""Memory and recovery with many leads: a worker's RSS holding N leads in RocksDB, and how
long a fresh worker takes to rebuild that state from the changelog topics.

1. N leads, each identified once (`traffic.generate(N, N)`), are produced to isolated input
   topics; a leadflow worker processes them all (input and internal offsets committed);
   its RSS (VmRSS) and peak RSS (VmHWM) are read from /proc, and the on-disk size of its
   RocksDB folder is measured.
2. That worker is stopped; a second worker with the same app id and an empty state folder
   starts; the time from its start until `/readyz` answers 200 (every table recovered from
   its changelog) and its peak RSS are reported, and a sample of leads is read back through
   its lead API to check the state is really there. `restore_records_per_s` is the
   changelog records (end offsets of the tables' changelog partitions) over those seconds
   to ready, start-up included.

    python benchmarks/state_bench.py --leads 1000000 [--json]

Uses the configured cluster (LEADFLOW_BOOTSTRAP_SERVERS) or starts a local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import (
    LEADFLOW_CMD,
    ROOT,
    SOURCES,
    Offsets,
    Run,
    _peak_rss_mb,
    _produce_all,
    _rss_mb,
    _stop,
    leadflow_env,
)
from traffic import generate, lead_id

from pipeline.devkafka.ports import free_port
from pipeline.kafka.topics import DEFAULT_TABLES, TopicSpec, ensure_topics

INTERNAL = ("identity", "leads", "assign")


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024 / 1024


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 (lives with the process)
    return subprocess.Popen(LEADFLOW_CMD, stdout=out, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT, start_new_session=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _until_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}")
        try:
            status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz", 2.0)
            if status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"worker not ready after {timeout_s:.0f} s")


async def state_bench(bootstrap: str, *, leads: int, partitions: int = 4, sample: int = 200,
                      timeout_s: float = 3600.0, seed: int = 7) -> dict[str, Any]:
    prefix = f"state-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = ROOT / ".leadflow" / "bench" / prefix
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(bootstrap, prefix, leads, leads, 0.0, 0.0, partitions, workdir, timeout_s, 0.0)
    run.inputs = {s: f"{prefix}.events.{s}" for s in SOURCES}
    group = f"{prefix}-leadflow"
    load_start = os.getloadavg()
    now_ms = int(time.time() * 1000)
    msgs = generate(leads, leads, seed=seed, start_ms=now_ms - 3_600_000, end_ms=now_ms)
    await ensure_topics(bootstrap, [TopicSpec(t, partitions, 1, {})
                                    for t in run.inputs.values()])
    took = await _produce_all(bootstrap, msgs, run.inputs)
    del msgs
    _say(f"produced {leads:,} identify events in {took:.1f} s")
    result: dict[str, Any] = {"leads": leads, "partitions": partitions, "prefix": prefix}

    port = free_port()
    home1 = workdir / "home-1"
    proc = _spawn(leadflow_env(run, group, port, home1), workdir / "worker-1.log")
    t0 = time.monotonic()
    try:
        async with Offsets(bootstrap) as offsets:
            topics = [*run.inputs.values(), *(f"{group}-{t}" for t in INTERNAL)]
            last = -1.0
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with code {proc.returncode}")
                done, end = await offsets.status(group, topics)
                inp, _ = await offsets.status(group, list(run.inputs.values()))
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    _say(f"  processing: {inp:,}/{leads:,} inputs committed, "
                         f"{time.monotonic() - t0:.0f} s, RSS {_rss_mb(proc.pid) or 0:.0f} MB")
                if end > 0 and done >= end and inp >= leads:
                    break
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"not processed after {timeout_s:.0f} s")
                await asyncio.sleep(0.5)
        processing_s = time.monotonic() - t0
        result["processing_s"] = round(processing_s, 1)
        result["events_per_s"] = round(leads / processing_s, 1)
        result["rss_mb"] = round(_rss_mb(proc.pid) or 0, 1)
        result["peak_rss_mb"] = round(_peak_rss_mb(proc.pid) or 0, 1)
    finally:
        _stop(proc)
    result["rocksdb_mb"] = round(_du_mb(home1 / "worker"), 1)
    async with Offsets(bootstrap) as offsets:
        _, changelog_records = await offsets.status(
            group, [f"{group}-{t}-changelog" for t in DEFAULT_TABLES])
    result["changelog_records"] = changelog_records
    _say(f"worker 1: {leads:,} leads in {result['processing_s']} s, RSS {result['rss_mb']} MB "
         f"(peak {result['peak_rss_mb']} MB), state on disk {result['rocksdb_mb']} MB")

    port = free_port()
    home2 = workdir / "home-2"
    proc = _spawn(leadflow_env(run, group, port, home2), workdir / "worker-2.log")
    try:
        recovery_s = await _until_ready(port, proc, timeout_s)
        result["recovery_s"] = round(recovery_s, 1)
        result["recovery_peak_rss_mb"] = round(_peak_rss_mb(proc.pid) or 0, 1)
        result["restore_records_per_s"] = round(changelog_records / recovery_s, 1)
        rng = random.Random(seed)
        picks = rng.sample(range(leads), min(sample, leads))
        found = 0
        for n in picks:
            status, body = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{port}/leads/{lead_id(n)}")
            found += status == 200 and json.loads(body).get("lead_id") == lead_id(n)
        result["sample"] = len(picks)
        result["sample_found"] = found
    finally:
        _stop(proc)
    _say(f"worker 2 (empty state folder): ready after {result['recovery_s']} s "
         f"({changelog_records:,} changelog records, {result['restore_records_per_s']:,}/s), "
         f"peak RSS {result['recovery_peak_rss_mb']} MB; {found}/{len(picks)} sampled leads "
         "served")
    result["machine"] = {"nproc": os.cpu_count(), "python": platform.python_version()}
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leads", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    from pipeline.devkafka.local import ensure_local_broker
    from pipeline.settings import Settings

    settings = Settings()
    bootstrap = settings.bootstrap_servers or ensure_local_broker(settings)
    res = asyncio.run(state_bench(bootstrap, leads=args.leads, partitions=args.partitions,
                                  sample=args.sample))
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
