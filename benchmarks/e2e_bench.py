"""End-to-end benchmark: leadflow against the raw client limit, naive Faust and Quix Streams.

One run, one broker, one set of generated traffic (`benchmarks/traffic.py`) on isolated
input topics (a unique prefix per run). Each system runs in its own process and consumer
group and reads the same input from the start:

1. throughput: all N events are produced before the system starts; `events_per_s` is
   measured from the last poll before the first committed offset to the moment every
   input offset (for leadflow also every offset of its internal re-keyed topics) is
   committed, by polling the group's committed offsets every 0.2 s;
2. latency: with the system caught up, `--latency-s` seconds of traffic at `--rate` events/s
   are produced with the send time as event time; p50/p99 of produce -> done (limit:
   consumed and decoded; naive_faust and quixstreams: table/state written; leadflow: the
   score agent's outputs acknowledged, from its `leadflow_processing_latency_seconds`
   histogram, interpolated within buckets);
3. peak RSS: VmHWM of the system's process (read from /proc before it is stopped).

Used by `leadflow bench` (pipeline/cli/bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traffic import generate, live_events

from pipeline.devkafka.ports import free_port
from pipeline.kafka.topics import TopicSpec, ensure_topics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = ("limit", "naive_faust", "quixstreams", "leadflow")
SOURCES = ("web", "email", "product", "crm")
INTERNAL = ("identity", "leads", "assign")


@dataclass
class Result:
    system: str
    available: bool = True
    reason: str = ""
    events: int = 0
    events_per_s: float | None = None
    #: Input offsets committed per CPU second of the system's process: on a shared machine
    #: this is steadier than the wall-clock rate, which also counts waiting for a core.
    events_per_cpu_s: float | None = None
    cpu_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_events: int = 0
    peak_rss_mb: float | None = None
    ratio_to_limit: float | None = None
    seconds: float | None = None
    #: Every input offset of the throughput phase committed before `max_s`.
    complete: bool = False
    #: The latency phase committed within `drain_s` of its last send.
    drained: bool = False
    #: Throughput events the system decoded (systems that write their own record; else None).
    decoded: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    bootstrap: str
    prefix: str
    events: int
    leads: int
    rate: float
    latency_s: float
    partitions: int
    workdir: Path
    max_s: float
    drain_s: float
    inputs: dict[str, str] = field(default_factory=dict)  # source -> topic, per system
    log: Any = None

    def say(self, text: str) -> None:
        if self.log:
            self.log(text)


# -- Kafka helpers ---------------------------------------------------------------------------

async def _produce_all(bootstrap: str, msgs: list[tuple[str, bytes, bytes]],
                       inputs: dict[str, str]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.monotonic()
    try:
        for i in range(0, len(msgs), 20000):
            futs = [await producer.send(inputs[s], v, key=k) for s, k, v in msgs[i:i + 20000]]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return time.monotonic() - t0


async def _produce_paced(bootstrap: str, count: int, leads: int, rate: float,
                         inputs: dict[str, str], seed: int) -> float:
    """Send `count` live events at `rate`/s, stamping the send time as event time."""
    import orjson
    from aiokafka import AIOKafkaProducer
    from traffic import _iso

    evs = live_events(count, leads, seed=seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    t0 = time.monotonic()
    futs = []
    try:
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        sent = 0
        while sent < count:
            now_ms = int(time.time() * 1000)
            for source, key, body in evs[sent:sent + per_tick]:
                body["timestamp"] = _iso(now_ms)
                futs.append(await producer.send(inputs[source], orjson.dumps(body),
                                                key=key.encode(), timestamp_ms=now_ms))
            sent += per_tick
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return time.monotonic() - t0


class Offsets:
    """Committed vs end offsets of a consumer group over some topics."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def __aenter__(self) -> Offsets:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.admin.close()

    async def status(self, group: str, topics: list[str]) -> tuple[int, int]:
        """(committed, end) summed over all partitions of `topics`."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        client = self.consumer._client
        if any(not self.consumer.partitions_for_topic(t) for t in topics):
            for t in topics:
                client.add_topic(t)
            await client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics
               for p in (self.consumer.partitions_for_topic(t) or ())]
        ends = await self.consumer.end_offsets(tps) if tps else {}
        committed: dict[Any, Any] = {}
        # leadflow reads its inputs in a group of their own, `<app id>-ingest`.
        for g in (group, f"{group}-ingest"):
            # KafkaError: e.g. the group's coordinator is not known yet
            with contextlib.suppress(KafkaError):
                committed.update(await self.admin.list_consumer_group_offsets(g))
        done = sum(min(committed[tp].offset, ends[tp]) if tp in committed and
                   committed[tp].offset >= 0 else 0 for tp in tps)
        return done, sum(ends.values())

    async def wait_done(self, group: str, inputs: list[str], topics: list[str],
                        timeout_s: float, proc: subprocess.Popen[bytes]) -> Progress:
        """Poll until all offsets of `topics` are committed, or `timeout_s` passes."""
        pr = Progress()
        deadline = time.monotonic() + timeout_s
        idle_at = time.monotonic()  # the last poll that saw no new input committed
        idle_cpu = _cpu_s(proc.pid)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the system's process exited with code {proc.returncode}")
            inp, _ = await self.status(group, inputs)
            done, end = await self.status(group, topics)
            now = time.monotonic()
            if pr.t_first is None and inp > pr.c_first:
                # Progress started after the last idle poll: count from there, so that a
                # system done within one poll interval still gets a (lower-bound) rate.
                pr.t_first, pr.cpu_first = idle_at, idle_cpu
            elif pr.t_first is None:
                pr.c_first, idle_at, idle_cpu = inp, now, _cpu_s(proc.pid)
            pr.t_last, pr.c_last, pr.cpu_last = now, inp, _cpu_s(proc.pid)
            known = all(self.consumer.partitions_for_topic(t) for t in topics)
            if known and end > 0 and done >= end:
                pr.complete = True
                return pr
            if now >= deadline:
                return pr
            await asyncio.sleep(0.2)


@dataclass
class Progress:
    t_first: float | None = None
    c_first: int = 0
    t_last: float = 0.0
    c_last: int = 0
    complete: bool = False
    cpu_first: float | None = None
    cpu_last: float | None = None

    def rate(self) -> float | None:
        if self.t_first is None or self.t_last <= self.t_first:
            return None
        return (self.c_last - self.c_first) / (self.t_last - self.t_first)

    def cpu_seconds(self) -> float | None:
        """CPU time the system's process used over the measured span."""
        if self.t_first is None or self.cpu_first is None or self.cpu_last is None:
            return None
        return self.cpu_last - self.cpu_first

    def rate_per_cpu_s(self) -> float | None:
        cpu = self.cpu_seconds()
        if cpu is None or cpu <= 0:
            return None
        return (self.c_last - self.c_first) / cpu


# -- systems ----------------------------------------------------------------------------------

def _status_mb(pid: int, field: str) -> float | None:
    """A memory field of /proc/<pid>/status (kB there) in MB, None if the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), None if it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        # The command name (field 2) may hold spaces: count fields after its ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return None


def _peak_rss_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmHWM")


def _rss_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmRSS")


def quix_python(workdir: Path, log: Any = None) -> tuple[Path | None, str]:
    """The quix venv's python (created on demand), or None and why not."""
    venv = ROOT / ".leadflow" / "bench" / "quix-venv"
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import quixstreams; print(quixstreams.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py, ""
    if log:
        log(f"creating {venv} and installing quixstreams (once)…")
    for cmd in (["python3", "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "-q", "quixstreams"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(cmd[:3])}: {exc}"
        if r.returncode != 0:
            return None, f"{' '.join(cmd[:3])} failed: {(r.stderr or r.stdout)[-400:]}"
    r = subprocess.run(check, capture_output=True, text=True)
    return (py, "") if r.returncode == 0 else (None, f"quixstreams import failed: {r.stderr}")


def _quantiles(lats: list[float]) -> tuple[float | None, float | None]:
    if not lats:
        return None, None
    lats = sorted(lats)
    return lats[int(0.50 * (len(lats) - 1))], lats[int(0.99 * (len(lats) - 1))]


_BUCKET = re.compile(
    r'^leadflow_processing_latency_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.M)


def _scrape(port: int) -> dict[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {float(le): float(n) for le, n in _BUCKET.findall(text)}


def _hist_quantile(before: dict[float, float], after: dict[float, float],
                   q: float) -> float | None:
    """Prometheus-style histogram_quantile over the difference of two scrapes (ms)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0
    if total <= 0:
        return None
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_b * 1000
            return (prev_b + (b - prev_b) * (rank - prev_c) / max(c - prev_c, 1e-9)) * 1000
        prev_b, prev_c = b, c
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


LEADFLOW_CMD = [sys.executable, "-m", "pipeline.cli.main", "worker", "--loglevel", "warning"]


def leadflow_env(run: Run, group: str, port: int, home: Path) -> dict[str, str]:
    """Environment of a leadflow worker on the run's isolated topics."""
    env = _env()
    p = run.prefix
    env.update({
        "LEADFLOW_BOOTSTRAP_SERVERS": run.bootstrap, "LEADFLOW_APP_ID": group,
        "LEADFLOW_PARTITIONS": str(run.partitions), "LEADFLOW_WEB_PORT": str(port),
        "LEADFLOW_HOME": str(home),
        **{f"LEADFLOW_TOPIC_{s.upper()}": t for s, t in run.inputs.items()},
        "LEADFLOW_TOPIC_STAGE_CHANGES": f"{p}.leads.stage-changes",
        "LEADFLOW_TOPIC_ROUTING_PREFIX": f"{p}.routing.",
        "LEADFLOW_TOPIC_NURTURE": f"{p}.routing.nurture",
        "LEADFLOW_TOPIC_RECYCLE": f"{p}.routing.recycle",
        "LEADFLOW_TOPIC_ESCALATIONS": f"{p}.routing.escalations",
        "LEADFLOW_TOPIC_DEADLETTER": f"{p}.events.deadletter",
    })
    return env


def _start(name: str, run: Run, group: str, out: Path) -> tuple[
        subprocess.Popen[bytes] | None, list[str], dict[str, Any], str]:
    """Start a system: (process, topics whose offsets mark it done, extras, unavailable why)."""
    topics = ",".join(run.inputs.values())
    log = open(run.workdir / f"{name}.log", "wb")  # noqa: SIM115 (lives with the process)
    common = ["--bootstrap", run.bootstrap, "--group", group, "--topics", topics,
              "--out", str(out)]
    extras: dict[str, Any] = {}
    if name in ("limit", "naive_faust"):
        cmd = [sys.executable, str(HERE / "systems.py"), name, *common,
               "--datadir", str(run.workdir / "faust"), "--partitions", str(run.partitions)]
        env = _env()
    elif name == "quixstreams":
        py, why = quix_python(run.workdir, run.log)
        if py is None:
            return None, [], extras, why
        cmd = [str(py), str(HERE / "quix_system.py"), *common,
               "--state-dir", str(run.workdir / "quix-state")]
        env = dict(os.environ)
    else:
        port = free_port()
        extras["web_port"] = port
        env = leadflow_env(run, group, port, run.workdir / "home")
        cmd = LEADFLOW_CMD
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    done_topics = list(run.inputs.values())
    if name == "leadflow":
        done_topics += [f"{group}-{t}" for t in INTERNAL]
    return proc, done_topics, extras, ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _wait_web(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            _scrape(port)
            return
        await asyncio.sleep(0.5)


async def bench_system(name: str, run: Run, offsets: Offsets, seed: int) -> Result:
    res = Result(name, events=run.events)
    group = f"{run.prefix}-{name.replace('_', '-')}"
    out = run.workdir / f"{name}.lat.json"
    proc, topics, extras, why = _start(name, run, group, out)
    if proc is None:
        res.available, res.reason = False, why
        return res
    run.say(f"{name}: running (pid {proc.pid}, log {run.workdir / (name + '.log')})")
    try:
        inputs = list(run.inputs.values())
        pr = await offsets.wait_done(group, inputs, topics, run.max_s, proc)
        rate = pr.rate()
        if pr.t_first is not None:
            res.seconds = round(pr.t_last - pr.t_first, 2)
        res.events_per_s = None if rate is None else round(rate, 1)
        per_cpu, cpu = pr.rate_per_cpu_s(), pr.cpu_seconds()
        res.events_per_cpu_s = None if per_cpu is None else round(per_cpu, 1)
        res.cpu_s = None if cpu is None else round(cpu, 2)
        res.complete = pr.complete
        if not pr.complete:
            res.notes.append("latency includes the wait behind the backlog")
            res.notes.append(f"throughput phase cut at {run.max_s:.0f} s: {pr.c_last:,} of "
                             f"{run.events:,} input offsets committed")
        run.say(f"{name}: {res.events_per_s} events/s ({res.events_per_cpu_s} per CPU "
                f"second of its process); latency phase "
                f"({run.rate:.0f}/s for {run.latency_s:.0f} s)…")
        before: dict[float, float] = {}
        if name == "leadflow":
            await _wait_web(extras["web_port"], proc, 30)
            before = _scrape(extras["web_port"])
        count = int(run.rate * run.latency_s)
        t_lat = time.time() * 1000
        took = await _produce_paced(run.bootstrap, count, run.leads, run.rate, run.inputs,
                                    seed + 1)
        if took > run.latency_s * 1.1:
            res.notes.append(f"producer reached only {count / took:.0f}/s")
        drained = await offsets.wait_done(group, inputs, topics, run.drain_s, proc)
        res.drained = drained.complete
        if not drained.complete:
            res.notes.append(f"latency phase not drained {run.drain_s:.0f} s after sending: "
                             "quantiles over the events done by then")
        if name == "leadflow":
            after = _scrape(extras["web_port"])
            p50 = _hist_quantile(before, after, 0.50)
            p99 = _hist_quantile(before, after, 0.99)
            res.p50_ms = None if p50 is None else round(p50, 1)
            res.p99_ms = None if p99 is None else round(p99, 1)
            res.latency_events = int(after.get(float("inf"), 0) - before.get(float("inf"), 0))
            res.notes.append("latency from the worker's histogram (bucket-interpolated)")
            if not pr.complete:  # the histogram mixes in the backlog's old event times
                res.p50_ms = res.p99_ms = None
                res.notes.append("latency not measured: backlog of the cut throughput phase")
        rss = _peak_rss_mb(proc.pid)
        res.peak_rss_mb = None if rss is None else round(rss, 1)
    except (RuntimeError, TimeoutError, OSError) as exc:
        res.available, res.reason = False, f"{type(exc).__name__}: {exc}"
        tail = (run.workdir / f"{name}.log").read_text(errors="replace")[-600:]
        res.reason += f" (log tail: {tail})"
        return res
    finally:
        _stop(proc)
    if name != "leadflow" and out.exists():
        data = json.loads(out.read_bytes())
        lats = [lat for ts, lat in zip(data["ts"], data["lat_ms"], strict=True) if ts >= t_lat]
        res.latency_events = len(lats)
        p50, p99 = _quantiles(lats)
        res.p50_ms = None if p50 is None else round(p50, 1)
        res.p99_ms = None if p99 is None else round(p99, 1)
        consumed = sum(1 for ts in data["ts"] if ts < t_lat)
        res.decoded = consumed
        if consumed != run.events and pr.complete:
            res.notes.append(f"processed {consumed} throughput events (at-least-once)")
    return res


async def bench(bootstrap: str, *, events: int, leads: int, systems: list[str], rate: float,
                latency_s: float, seed: int = 7, partitions: int = 4, max_s: float = 120.0,
                drain_s: float = 30.0,
                log: Any = None) -> dict[str, Any]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # topics not there yet etc.
    load_start = os.getloadavg()
    prefix = f"bench-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = ROOT / ".leadflow" / "bench" / prefix
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(bootstrap, prefix, events, leads, rate, latency_s, partitions, workdir, max_s,
              drain_s, log=log)
    now_ms = int(time.time() * 1000)
    t0 = time.monotonic()
    msgs = generate(events, leads, seed=seed, start_ms=now_ms - 3_600_000, end_ms=now_ms)
    run.say(f"generated {events:,} events over {leads:,} leads in {time.monotonic() - t0:.1f} s")
    results: dict[str, Result] = {}
    produce_s: dict[str, float] = {}
    async with Offsets(bootstrap) as offsets:
        for i, name in enumerate(systems):
            # Each system reads its own copy of the same messages (its latency traffic
            # must not become the next system's input).
            run.inputs = {s: f"{prefix}.{name.replace('_', '-')}.events.{s}" for s in SOURCES}
            await ensure_topics(bootstrap, [TopicSpec(t, partitions, 1, {})
                                            for t in run.inputs.values()])
            took = await _produce_all(bootstrap, msgs, run.inputs)
            produce_s[name] = round(took, 2)
            run.say(f"{name}: produced {events:,} events in {took:.1f} s")
            results[name] = await bench_system(name, run, offsets, seed + 10 * i)
    limit = results.get("limit")
    for r in results.values():
        if limit and limit.events_per_s and r.events_per_s:
            r.ratio_to_limit = round(r.events_per_s / limit.events_per_s, 3)
    return {
        "prefix": prefix, "bootstrap": bootstrap, "events": events, "leads": leads,
        "offered_rate": rate, "latency_s": latency_s, "partitions": partitions,
        "produce_s": produce_s, "max_s": max_s, "drain_s": drain_s,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "systems": {n: asdict(r) for n, r in results.items()},
    }
