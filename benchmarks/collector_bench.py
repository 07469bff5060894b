"""Collector benchmark: one `leadflow collector` process on loopback in front of a real broker.

The collector runs in its own process (`python -m pipeline.cli.main collector`), so that the
load generator here does not share its event loop or its core, with fresh input topics, one
write key per source and rate limits far above the offered load. `--clients` concurrent
aiohttp clients, each on its own connection, post `/v1/batch` requests of `--batch` Segment
messages (the identify/page/track mix of `benchmarks/traffic.py`, with messageId, userId,
timestamp, context and properties; all messages of a batch from one source, as one SDK sends
them) with the source's write key as the HTTP Basic user, until `--events` messages are sent
(or for `--duration` seconds, cycling over the generated batches).

Reported: events accepted per second, requests per second, per-request latency
p50/p95/p99/max, non-200 answers by status, the collector process's CPU seconds (from
/proc/<pid>/stat) and events per collector CPU second. At the end the records added to the
input topics (end offsets minus the offsets before the measured phase) must equal the events
accepted, else the script exits 1.

    .venv/bin/python benchmarks/collector_bench.py [--bootstrap HOST:PORT] [--events 200000]
        [--clients 8] [--batch 100] [--duration S] [--json]

Without --bootstrap it uses LEADFLOW_BOOTSTRAP_SERVERS or the local broker (started, and
stopped at the end, if none runs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import ROOT, SOURCES, _cpu_s, _env, _stop
from traffic import _iso, generate

from pipeline.devkafka.ports import free_port
from pipeline.kafka.topics import TopicSpec, ensure_topics

#: Far above any load one machine offers: the bench measures the collector, not its limiter.
UNLIMITED = 1_000_000_000


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- traffic ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """One ready /v1/batch request: the write key's source, the JSON body, its message count."""

    source: str
    body: bytes
    events: int


def write_key(source: str) -> str:
    return f"bench-{source}-key"


def _body(values: list[bytes], sent_ms: int) -> bytes:
    # Joined as bytes: the messages are already JSON, and decoding them only to encode again
    # would cost the load generator time on a machine it shares with the collector.
    return b'{"batch":[' + b",".join(values) + b'],"sentAt":"' + _iso(sent_ms).encode() + b'"}'


def make_batches(events: int, batch: int, leads: int, seed: int) -> list[Batch]:
    """`events` generated messages in batches of `batch`, each batch from a single source."""
    now_ms = int(time.time() * 1000)
    # Event times in the last hour: in the past, so the collector's future-skew check passes.
    msgs = generate(events, max(1, min(leads, events)), seed=seed, start_ms=now_ms - 3_600_000,
                    end_ms=now_ms - 1000)
    pending: dict[str, list[bytes]] = {s: [] for s in SOURCES}
    out: list[Batch] = []
    for source, _key, value in msgs:
        pending[source].append(value)
        if len(pending[source]) == batch:
            out.append(Batch(source, _body(pending[source], now_ms), batch))
            pending[source] = []
    out.extend(Batch(s, _body(v, now_ms), len(v)) for s, v in pending.items() if v)
    return out


# -- the collector process ------------------------------------------------------------------

def topic_names(prefix: str) -> dict[str, str]:
    """Source (and "deadletter") -> the run's fresh topic."""
    return {s: f"{prefix}.events.{s}" for s in (*SOURCES, "deadletter")}


def collector_env(bootstrap: str, topics: dict[str, str], home: Path) -> dict[str, str]:
    env = _env()
    env.update({
        "LEADFLOW_BOOTSTRAP_SERVERS": bootstrap,
        "LEADFLOW_HOME": str(home),
        "LEADFLOW_WRITE_KEYS": json.dumps({write_key(s): s for s in SOURCES}),
        **{f"LEADFLOW_TOPIC_{name.upper()}": t for name, t in topics.items()},
        "LEADFLOW_COLLECTOR_RATE_PER_S": str(UNLIMITED),
        "LEADFLOW_COLLECTOR_BURST": str(UNLIMITED),
        "LEADFLOW_COLLECTOR_IP_RATE_PER_S": str(UNLIMITED),
        "LEADFLOW_COLLECTOR_IP_BURST": str(UNLIMITED),
    })
    return env


def start_collector(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 (lives with the process)
    cmd = [sys.executable, "-m", "pipeline.cli.main", "collector", "--port", str(port),
           "--loglevel", "warning"]
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)


async def wait_healthy(session: aiohttp.ClientSession, url: str,
                       proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Until GET /healthz answers 200; RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the collector exited with code {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{url}/healthz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"collector not healthy after {timeout_s:.0f} s")


# -- offsets ---------------------------------------------------------------------------------

async def end_offsets(bootstrap: str, topics: list[str]) -> int:
    """Sum of the end offsets of every partition of `topics`."""
    from aiokafka import AIOKafkaConsumer

    from pipeline.alerts import topic_partitions

    tps, missing = await topic_partitions(bootstrap, topics)  # fresh topics: ask the cluster
    if missing:
        raise SystemExit(f"topics missing on {bootstrap}: {', '.join(missing)}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


# -- load ------------------------------------------------------------------------------------

@dataclass
class Load:
    """What the clients saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # no HTTP answer at all
    accepted: int = 0  # events in 200 answers, minus the items the collector rejected
    rejected: int = 0
    wall_s: float = 0.0


def _headers(source: str) -> dict[str, str]:
    # Segment's form: the write key as the Basic user, no password.
    auth = base64.b64encode(f"{write_key(source)}:".encode()).decode()
    return {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}


async def post(session: aiohttp.ClientSession, url: str, b: Batch, load: Load,
               headers: dict[str, dict[str, str]]) -> None:
    """One request; its latency, status and accepted events go into `load`."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=b.body, headers=headers[b.source]) as r:
            answer = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.errors[type(exc).__name__] += 1
        return
    load.latencies_ms.append((time.perf_counter() - t0) * 1000)
    load.statuses[status] += 1
    if status == 200:
        # {"success": true} unless some items were refused: parse only then.
        rejected = len(json.loads(answer).get("rejected", ())) if b"rejected" in answer else 0
        load.rejected += rejected
        load.accepted += b.events - rejected


def work(batches: list[Batch], duration_s: float | None) -> Callable[[], Batch | None]:
    """The clients' shared queue: each batch once, or cycling until the duration is over."""
    if duration_s is None:
        it: Iterator[Batch] = iter(batches)
        return lambda: next(it, None)
    deadline = time.monotonic() + duration_s
    cycle = _cycle(batches)
    return lambda: next(cycle) if time.monotonic() < deadline else None


def _cycle(batches: list[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


async def client(url: str, next_batch: Callable[[], Batch | None], load: Load,
                 timeout_s: float) -> None:
    """One client: its own connection, one request at a time, as an SDK's flush loop."""
    headers = {s: _headers(s) for s in SOURCES}
    conn = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        while (b := next_batch()) is not None:
            await post(session, f"{url}/v1/batch", b, load, headers)


async def drive(url: str, batches: list[Batch], clients: int, duration_s: float | None,
                timeout_s: float = 30.0) -> Load:
    load = Load()
    next_batch = work(batches, duration_s)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(url, next_batch, load, timeout_s) for _ in range(clients)))
    load.wall_s = time.perf_counter() - t0
    return load


# -- report ----------------------------------------------------------------------------------

def percentile(sorted_ms: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return None
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


def commit() -> str:
    """The short commit, with "-dirty" when tracked files differ from it (figures quoted from
    such a run came from code that commit does not hold)."""
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return r.stdout.strip() + ("-dirty" if dirty else "")


def summarize(load: Load, cpu_s: float | None, added: int, dead_letters: int,
              own_cpu_s: float) -> dict[str, Any]:
    lats = sorted(load.latencies_ms)
    wall = load.wall_s or float("nan")
    requests = len(lats) + sum(load.errors.values())
    return {
        "events_accepted": load.accepted,
        "events_rejected": load.rejected,
        "events_per_s": _round(load.accepted / wall, 1),
        "requests": requests,
        "requests_per_s": _round(requests / wall, 1),
        "wall_s": _round(load.wall_s, 3),
        "latency_ms": {"p50": _round(percentile(lats, 0.50), 3),
                       "p95": _round(percentile(lats, 0.95), 3),
                       "p99": _round(percentile(lats, 0.99), 3),
                       "max": _round(lats[-1] if lats else None, 3)},
        "non_200": {str(s): n for s, n in sorted(load.statuses.items()) if s != 200},
        "client_errors": dict(load.errors),
        "collector_cpu_s": _round(cpu_s, 2),
        "events_per_collector_cpu_s": _round(load.accepted / cpu_s, 1) if cpu_s else None,
        # The load generator's own CPU: near the collector's would mean it shared the limit.
        "loadgen_cpu_s": round(own_cpu_s, 2),
        "records_on_topics": added,
        "dead_letters": dead_letters,
        "records_match": added == load.accepted,
    }


# -- the run ---------------------------------------------------------------------------------

@dataclass
class Measured:
    load: Load
    collector_cpu_s: float | None
    loadgen_cpu_s: float
    start_records: int  # on the input topics before the measured phase
    start_dead: int


async def warm_up(url: str, batches: list[Batch]) -> None:
    """One batch per source before measuring: the collector starts its Kafka producer (and
    fetches each topic's metadata) on first use, which is not the steady state."""
    firsts = {b.source: b for b in reversed(batches)}
    load = Load()
    headers = {s: _headers(s) for s in SOURCES}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for b in firsts.values():
            await post(session, f"{url}/v1/batch", b, load, headers)
    if load.statuses != Counter({200: len(firsts)}) or load.rejected:
        raise RuntimeError(f"warm-up not accepted: statuses {dict(load.statuses)}, "
                           f"errors {dict(load.errors)}, {load.rejected} items rejected")


async def measure(url: str, proc: subprocess.Popen[bytes], batches: list[Batch],
                  clients: int, duration_s: float | None, bootstrap: str,
                  topics: dict[str, str]) -> Measured:
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, url, proc)
    await warm_up(url, batches)
    start = await end_offsets(bootstrap, [topics[s] for s in SOURCES])
    start_dead = await end_offsets(bootstrap, [topics["deadletter"]])
    cpu0, own0 = _cpu_s(proc.pid), time.process_time()
    load = await drive(url, batches, clients, duration_s)
    cpu1, own1 = _cpu_s(proc.pid), time.process_time()
    if proc.poll() is not None:
        raise RuntimeError(f"the collector exited with code {proc.returncode}")
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Measured(load, cpu, own1 - own0, start, start_dead)


async def collector_bench(bootstrap: str, *, events: int = 200_000, clients: int = 8,
                          batch: int = 100, duration_s: float | None = None,
                          leads: int | None = None, partitions: int = 4,
                          seed: int = 7) -> dict[str, Any]:
    """Run the bench against `bootstrap`; the report as a JSON-ready dict."""
    prefix = f"cbench-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = ROOT / ".leadflow" / "bench" / prefix
    workdir.mkdir(parents=True, exist_ok=True)
    topics = topic_names(prefix)
    await ensure_topics(bootstrap, [TopicSpec(t, partitions, 1, {}) for t in topics.values()])
    t0 = time.monotonic()
    # One user in ten new by default: each user's first message is an identify, the rest
    # its page and track calls, whatever the run's size.
    batches = make_batches(events, batch, leads or events // 10, seed)
    _say(f"generated {events:,} messages in {len(batches):,} batches in "
         f"{time.monotonic() - t0:.1f} s; topics {prefix}.*")
    load_start = os.getloadavg()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "collector.log"
    proc = start_collector(collector_env(bootstrap, topics, workdir / "home"), port, log)
    _say(f"collector pid {proc.pid} on {url}, log {log}; {clients} clients posting…")
    try:
        m = await measure(url, proc, batches, clients, duration_s, bootstrap, topics)
    finally:
        _stop(proc)
    added = await end_offsets(bootstrap, [topics[s] for s in SOURCES]) - m.start_records
    dead = await end_offsets(bootstrap, [topics["deadletter"]]) - m.start_dead
    return {
        "bench": "collector", "commit": commit(), "prefix": prefix, "bootstrap": bootstrap,
        "events": events, "clients": clients, "batch": batch, "duration_s": duration_s,
        "partitions": partitions,
        **summarize(m.load, m.collector_cpu_s, added, dead, m.loadgen_cpu_s),
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "log": str(log),
    }


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) \
        else str(v)


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"leadflow collector: {r['clients']} clients, /v1/batch of {r['batch']} "
                    f"messages", show_header=False)
    lat = r["latency_ms"]
    rows = [
        ("events accepted", _fmt(r["events_accepted"])),
        ("events/s accepted", _fmt(r["events_per_s"], 0)),
        ("requests", _fmt(r["requests"])),
        ("requests/s", _fmt(r["requests_per_s"], 0)),
        ("latency p50 / p95 / p99 / max (ms)",
         " / ".join(_fmt(lat[k], 1) for k in ("p50", "p95", "p99", "max"))),
        ("non-200 answers", ", ".join(f"{s}: {n:,}" for s, n in r["non_200"].items()) or "0"),
        ("connection errors", ", ".join(f"{e}: {n:,}" for e, n in r["client_errors"].items())
         or "0"),
        ("items rejected in 200 answers", _fmt(r["events_rejected"])),
        ("collector CPU s", _fmt(r["collector_cpu_s"], 2)),
        ("events per collector CPU s", _fmt(r["events_per_collector_cpu_s"], 0)),
        ("load generator CPU s", _fmt(r["loadgen_cpu_s"], 2)),
        ("records on input topics", _fmt(r["records_on_topics"])),
        ("dead letters", _fmt(r["dead_letters"])),
        ("check: records == accepted", "ok" if r["records_match"] else "MISMATCH"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    m = r["machine"]
    t.caption = (f"commit {r['commit']}; {m['cpu']}, {m['cores']} cores, Python {m['python']};"
                 f" load average at start {r['loadavg_start']}, at end {r['loadavg_end']}"
                 f" (shared machine); topics {r['prefix']}.*")
    Console().print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="Kafka bootstrap servers (default: "
                    "LEADFLOW_BOOTSTRAP_SERVERS, else the local broker, started if needed)")
    ap.add_argument("--events", type=int, default=200_000, help="messages to send")
    ap.add_argument("--duration", type=float, help="send for this many seconds instead, "
                    "cycling over the --events generated messages")
    ap.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    ap.add_argument("--batch", type=int, default=100, help="messages per /v1/batch request")
    ap.add_argument("--leads", type=int, help="distinct users in the traffic "
                    "(default: a tenth of --events)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    bootstrap, started = _bootstrap(args.bootstrap)
    try:
        report = asyncio.run(collector_bench(
            bootstrap, events=args.events, clients=args.clients, batch=args.batch,
            duration_s=args.duration, leads=args.leads, partitions=args.partitions,
            seed=args.seed))
    finally:
        if started is not None:
            started()
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    if not report["records_match"]:
        _say(f"check failed: {report['records_on_topics']:,} records on the input topics, "
             f"{report['events_accepted']:,} events accepted")
        return 1
    return 0


def _bootstrap(given: str | None) -> tuple[str, Callable[[], object] | None]:
    """The bootstrap servers, and how to stop the local broker if this run started it."""
    if given:
        return given, None
    from pipeline.devkafka.local import ensure_local_broker, local_status, stop_local_broker
    from pipeline.settings import Settings

    settings = Settings()
    had = bool(settings.bootstrap_servers) or local_status(settings) is not None
    bootstrap = ensure_local_broker(settings)
    return bootstrap, None if had else (lambda: stop_local_broker(settings))


if __name__ == "__main__":
    sys.exit(main())
