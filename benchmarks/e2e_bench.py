"""End-to-end benchmark: leadflow against the raw client limit, naive Faust and Quix Streams.

One run, one broker, one set of generated traffic (`benchmarks/traffic.py`) on isolated
input topics (a unique prefix per run). Each system runs in its own process and consumer
group and reads the same input from the start:

1. throughput: all N events are produced before the system starts. Every 0.2 s the
   benchmark polls the system's consumer groups (for leadflow also `<app id>-ingest`):
   whether the broker has assigned them their partitions (group Stable with members) and
   how many offsets are committed. The clock starts at the last poll that saw no group
   assigned (the system cannot have consumed anything yet) and stops at the first poll that
   saw every input offset (for leadflow and quix_leadflow also every offset of their
   internal re-keyed topics) committed; `events_per_s` is the input offsets committed then
   over that span (`figures.throughput_span`). The rule is the same for every system and
   only needs its group, so it does not depend on how often a system commits: a system
   that commits every few seconds used to have the work before its first commit counted
   without its time.
   Commits still bound the end, so every system commits often: limit and leadflow per
   batch, Faust and Quix every `COMMIT_INTERVAL_S` (their defaults are 2.8 s and 5 s);
2. latency: with the system caught up, `--latency-s` seconds of traffic at `--rate` events/s
   are produced with the send time as event time and record timestamp. Latency is produce ->
   done, in wall-clock ms on this machine, per record: limit: consumed and decoded;
   naive_faust: table written; quixstreams: state written (each recorded in the system's
   process); leadflow and quix_leadflow (leadflow's stages in a Quix Streams application,
   `benchmarks/quix_leadflow_system.py`): the alert on its team routing topic (the alert
   record's timestamp, set when handed to its producer, minus its `triggered_ms`, the
   triggering event's time), so only the events that raise an alert are samples. p50/p99
   are exact nearest-rank quantiles of those samples (`figures.quantiles`);
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
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import Poll, quantiles, throughput_span
from traffic import generate, live_events

from pipeline.devkafka.ports import free_ports
from pipeline.kafka.topics import TopicSpec, ensure_topics
from pipeline.settings import Topics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = ("limit", "naive_faust", "quixstreams", "quix_leadflow", "leadflow", "leadflow_2w")
#: leadflow as `leadflow worker` runs it: one process, or two on this machine (`--processes 2`).
LEADFLOW_PROCESSES = {"leadflow": 1, "leadflow_2w": 2}
#: Systems that run leadflow's stages (their own internal topics `<group>-<hop>`) and whose
#: latency is read from their alerts on the team routing topics.
ALERTING = (*LEADFLOW_PROCESSES, "quix_leadflow")
#: What leadflow's pure stages import beyond the standard library (names in pyproject.toml's
#: dependencies): installed in the quix venv for `quix_leadflow` (aiokafka for its murmur2).
STAGE_DEPS = ("aiokafka", "orjson", "pydantic", "pydantic-settings", "ruamel.yaml", "tzdata")
STAGE_PROBE = ("import pipeline.stream.stages.assign, pipeline.stream.stages.ingest, "
               "pipeline.stream.stages.score, pipeline.stream.stages.stitch, pipeline.settings; "
               "from pipeline.core.rules import load_default_rules; load_default_rules()")
SOURCES = ("web", "email", "product", "crm")
INTERNAL = ("identity", "leads", "assign")
#: Commit interval given to Faust and Quix Streams (seconds): the end of a throughput phase
#: is seen through commits, so it must not wait for a multi-second default interval.
COMMIT_INTERVAL_S = 0.2
POLL_S = 0.2
#: Outputs under the routing prefix that are not team alerts.
NOT_ALERTS = ("nurture", "recycle", "review", "escalations")


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
    #: Latency-phase events per CPU second of the system's process, from the first send
    #: until the phase is committed: what a rate costs, idle waits and small batches included.
    latency_events_per_cpu_s: float | None = None
    #: Seconds the process's threads waited for a core during the latency phase (from
    #: /proc schedstat): on a shared machine, how much of the latency is the machine's.
    latency_runqueue_s: float | None = None
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
        self.behind: list[str] = []

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
        at = {tp: max(committed[tp].offset, 0) if tp in committed else 0 for tp in tps}
        #: The partitions not committed to their end at this poll: what a timeout names.
        self.behind = sorted(f"{tp.topic}[{tp.partition}] {at[tp]}/{ends[tp]}"
                             for tp in tps if at[tp] < ends[tp])
        return sum(min(at[tp], ends[tp]) for tp in tps), sum(ends.values())

    async def assigned(self, groups: list[str]) -> bool | None:
        """Has the broker handed one of `groups` its partitions (Stable, with members)?

        None when that is not known (a group could not be described)."""
        from aiokafka.errors import KafkaError

        known = True
        for g in groups:
            try:
                for resp in await self.admin.describe_consumer_groups([g]):
                    # (error_code, group_id, state, protocol_type, protocol, members, ...)
                    for d in resp.groups:
                        if d[0] != 0:
                            known = False
                        elif d[2] == "Stable" and d[5]:
                            return True
            except KafkaError:  # e.g. the group's coordinator is not known yet
                known = False
        return False if known else None

    async def watch(self, groups: list[str], inputs: list[str], topics: list[str],
                    timeout_s: float, proc: subprocess.Popen[bytes]) -> list[Poll]:
        """Poll until all offsets of `topics` are committed, or `timeout_s` passes."""
        polls: list[Poll] = []
        deadline = time.monotonic() + timeout_s
        seen = False  # a group was assigned: no need to ask again
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the system's process exited with code {proc.returncode}")
            t0 = time.monotonic()
            assigned = True if seen else await self.assigned(groups)
            seen = assigned is True
            inp, _ = await self.status(groups[0], inputs)
            done, end = await self.status(groups[0], topics)
            known = all(self.consumer.partitions_for_topic(t) for t in topics)
            complete = known and end > 0 and done >= end
            t1 = time.monotonic()
            polls.append(Poll(t0, t1, assigned, inp, complete, _cpu_s(proc.pid)))
            if complete or t1 >= deadline:
                return polls
            await asyncio.sleep(POLL_S)


# -- systems ----------------------------------------------------------------------------------

def _status_mb(pid: int, field: str) -> float | None:
    """A memory field of /proc/<pid>/status (kB there) in MB, None if the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The process's running children (of all its threads)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _one_cpu_s(pid: int) -> float | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        # The command name (field 2) may hold spaces: count fields after its ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process and its running children (all threads), None
    if it is gone: `leadflow worker --processes N` does its work in N children."""
    own = _one_cpu_s(pid)
    if own is None:
        return None
    return own + sum(_one_cpu_s(k) or 0.0 for k in _children(pid))


def _runqueue_s(pid: int) -> float | None:
    """Seconds the threads of a process and its children have waited on a run queue."""
    total, seen = 0, False
    for p in [pid, *_children(pid)]:
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
                seen = True
    return total / 1e9 if seen else None


def _peak_rss_mb(pid: int) -> float | None:
    """Peak RSS of the process, or of its largest child when it has children (per worker)."""
    kids = [r for r in (_status_mb(k, "VmHWM") for k in _children(pid)) if r is not None]
    return max(kids) if kids else _status_mb(pid, "VmHWM")


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


def stage_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirement strings of `STAGE_DEPS` as pyproject.toml pins them."""
    import re
    import tomllib

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]

    def name(req: str) -> str:
        return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower()
    found = [d for d in deps if name(d) in STAGE_DEPS]
    missing = set(STAGE_DEPS) - {name(d) for d in found}
    if missing:
        raise LookupError(f"{sorted(missing)} not in {pyproject}'s dependencies")
    return found


def quix_leadflow_python(workdir: Path, log: Any = None) -> tuple[Path | None, str]:
    """The quix venv's python, able to import leadflow's pure stages from this tree (on
    PYTHONPATH, `_env`) once `STAGE_DEPS` are installed in it; or None and why not."""
    py, why = quix_python(workdir, log)
    if py is None:
        return py, why
    probe = [str(py), "-c", STAGE_PROBE]
    if subprocess.run(probe, capture_output=True, env=_env(), cwd=ROOT).returncode == 0:
        return py, ""
    reqs = stage_requirements()
    if log:
        log(f"installing {', '.join(reqs)} in {py.parent.parent} (once)…")
    cmd = [str(py), "-m", "pip", "install", "-q", *reqs]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip install {' '.join(reqs)}: {exc}"
    if r.returncode != 0:
        return None, f"pip install {' '.join(reqs)} failed: {(r.stderr or r.stdout)[-400:]}"
    r = subprocess.run(probe, capture_output=True, text=True, env=_env(), cwd=ROOT)
    return (py, "") if r.returncode == 0 else (
        None, f"leadflow's stages do not import in the quix venv: {r.stderr[-400:]}")


def routing_prefix(run: Run, name: str) -> str:
    """Where a system's team alerts go: `<prefix>.routing.` for leadflow (`leadflow_env`),
    `<prefix>.<system>.routing.` for quix_leadflow (all its outputs under `<prefix>.<system>.`)."""
    if name in LEADFLOW_PROCESSES:
        return f"{run.prefix}.routing."
    return f"{outputs_prefix(run, name)}routing."


def outputs_prefix(run: Run, name: str) -> str:
    return f"{run.prefix}.{name.replace('_', '-')}."


def team_topics(routing_prefix: str) -> Callable[[Any], list[str]]:
    """Picks the team routing topics under `routing_prefix` from cluster metadata (the
    nurture, recycle, review and escalation topics carry no first alerts)."""
    def choose(cluster: Any) -> list[str]:
        return [t for t in cluster.topics() if t.startswith(routing_prefix)
                and t[len(routing_prefix):] not in NOT_ALERTS]
    return choose


async def read_to_end(bootstrap: str, choose: Callable[[Any], Iterable[str]],
                      timeout_s: float, *, read_committed: bool = False,
                      ) -> tuple[list[Any], bool]:
    """Every record of the topics `choose` picks from the cluster's metadata, from their
    start to their end offsets when reading began; and whether those ends were reached
    within `timeout_s` (if not, the records read by then)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted")
    await consumer.start()
    records: list[Any] = []
    try:
        # consumer.topics() does not update the consumer's own metadata: keep the answer.
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in choose(cluster)
               for p in cluster.partitions_for_topic(t) or ()]
        if not tps:
            return records, True
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return records, True
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                records += msgs
        return records, False
    finally:
        await consumer.stop()


async def _alert_latencies(bootstrap: str, routing_prefix: str, since_ms: float,
                           timeout_s: float = 30.0) -> list[float]:
    """Alert record timestamp minus `triggered_ms` (ms), for alerts triggered at `since_ms` or
    later, over every team routing topic under `routing_prefix` (SLA re-sends excluded)."""
    import orjson

    records, _ = await read_to_end(bootstrap, team_topics(routing_prefix), timeout_s,
                                   read_committed=True)
    lats: list[float] = []
    for m in records:
        alert = orjson.loads(m.value)
        triggered = int(alert["triggered_ms"])
        if triggered >= since_ms and not alert.get("reassigned"):
            lats.append(float(m.timestamp - triggered))
    return lats


def _p50_p99(lats: list[float]) -> tuple[float | None, float | None]:
    qs = quantiles(lats, (0.50, 0.99))
    return (None, None) if qs is None else (round(qs[0], 1), round(qs[1], 1))


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
        # Every other topic (outputs, dead letters, published rules) under the run's prefix:
        # a run must neither write to nor follow the broker's shared default topics.
        **{f"LEADFLOW_TOPIC_{name.upper()}": f"{p}.{f.default}"
           for name, f in Topics.model_fields.items() if name not in SOURCES},
        **{f"LEADFLOW_TOPIC_{s.upper()}": t for s, t in run.inputs.items()},
    })
    return env


def _worker_settings(settings: Any, tuning: Any) -> list[str]:
    """The worker's settings the quix_leadflow steps take (as `leadflow worker` reads them
    from this environment), as its command line arguments."""
    return ["--visitor-buffer", str(tuning.visitor_buffer),
            "--max-message-bytes", str(settings.max_message_bytes),
            "--max-future-skew-s", str(settings.max_future_skew_s),
            "--dedup-retention-s", str(settings.dedup_retention_s),
            "--score-ledger" if settings.score_ledger else "--no-score-ledger"]


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
               "--datadir", str(run.workdir / "faust"), "--partitions", str(run.partitions),
               "--commit-interval", str(COMMIT_INTERVAL_S)]
        env = _env()
    elif name == "quixstreams":
        py, why = quix_python(run.workdir, run.log)
        if py is None:
            return None, [], extras, why
        cmd = [str(py), str(HERE / "quix_system.py"), *common,
               "--state-dir", str(run.workdir / "quix-state"),
               "--commit-interval", str(COMMIT_INTERVAL_S)]
        env = dict(os.environ)
    elif name == "quix_leadflow":
        from pipeline.settings import Settings
        from pipeline.stream.app import Tuning

        py, why = quix_leadflow_python(run.workdir, run.log)
        if py is None:
            return None, [], extras, why
        cmd = [str(py), str(HERE / "quix_leadflow_system.py"), *common,
               "--sources", ",".join(run.inputs), "--out-prefix", outputs_prefix(run, name),
               "--state-dir", str(run.workdir / "quix-leadflow-state"),
               "--partitions", str(run.partitions),
               "--commit-interval", str(COMMIT_INTERVAL_S),
               *_worker_settings(Settings(), Tuning())]
        env = _env()
    else:
        n = LEADFLOW_PROCESSES[name]
        port = free_ports(n)
        extras["web_port"] = port
        env = leadflow_env(run, group, port, run.workdir / "home" / name)
        # No standby copies: two processes on one machine would each keep a copy of the
        # other's tables on that same machine, through Faust's per-record recovery path.
        env["LEADFLOW_STANDBY_REPLICAS"] = "0"
        cmd = LEADFLOW_CMD + (["--processes", str(n)] if n > 1 else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    done_topics = list(run.inputs.values())
    if name in ALERTING:
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


async def bench_system(name: str, run: Run, offsets: Offsets, seed: int) -> Result:
    res = Result(name, events=run.events)
    group = f"{run.prefix}-{name.replace('_', '-')}"
    out = run.workdir / f"{name}.lat.json"
    proc, topics, _extras, why = _start(name, run, group, out)
    if proc is None:
        res.available, res.reason = False, why
        return res
    run.say(f"{name}: running (pid {proc.pid}, log {run.workdir / (name + '.log')})")
    # leadflow reads its inputs in a group of their own, `<app id>-ingest`.
    groups = [group, f"{group}-ingest"] if name in LEADFLOW_PROCESSES else [group]
    try:
        inputs = list(run.inputs.values())
        polls = await offsets.watch(groups, inputs, topics, run.max_s, proc)
        span = throughput_span(polls)
        if span is not None:
            res.seconds = round(span.seconds, 2)
            per_s, per_cpu = span.events_per_s(), span.events_per_cpu_s()
            res.events_per_s = None if per_s is None else round(per_s, 1)
            res.events_per_cpu_s = None if per_cpu is None else round(per_cpu, 1)
            res.cpu_s = None if span.cpu_s is None else round(span.cpu_s, 2)
        res.complete = span is not None and span.complete
        if not res.complete:
            res.notes.append("latency includes the wait behind the backlog")
            res.notes.append(f"throughput phase cut at {run.max_s:.0f} s: "
                             f"{polls[-1].committed:,} of {run.events:,} input offsets "
                             "committed")
        run.say(f"{name}: {res.events_per_s} events/s ({res.events_per_cpu_s} per CPU "
                f"second of its process) over {res.seconds} s; latency phase "
                f"({run.rate:.0f}/s for {run.latency_s:.0f} s)…")
        count = int(run.rate * run.latency_s)
        t_lat = time.time() * 1000
        cpu0, wait0 = _cpu_s(proc.pid), _runqueue_s(proc.pid)
        took = await _produce_paced(run.bootstrap, count, run.leads, run.rate, run.inputs,
                                    seed + 1)
        if took > run.latency_s * 1.1:
            res.notes.append(f"producer reached only {count / took:.0f}/s")
        drained = await offsets.watch(groups, inputs, topics, run.drain_s, proc)
        res.drained = drained[-1].done
        cpu1, wait1 = _cpu_s(proc.pid), _runqueue_s(proc.pid)
        if wait0 is not None and wait1 is not None:
            res.latency_runqueue_s = round(wait1 - wait0, 2)
        if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
            res.latency_events_per_cpu_s = round(count / (cpu1 - cpu0), 1)
        if not res.drained:
            res.notes.append(f"latency phase not drained {run.drain_s:.0f} s after sending: "
                             "quantiles over the events done by then")
        rss = _peak_rss_mb(proc.pid)
        res.peak_rss_mb = None if rss is None else round(rss, 1)
    except (RuntimeError, TimeoutError, OSError) as exc:
        res.available, res.reason = False, f"{type(exc).__name__}: {exc}"
        tail = (run.workdir / f"{name}.log").read_text(errors="replace")[-600:]
        res.reason += f" (log tail: {tail})"
        return res
    finally:
        _stop(proc)
    if out.exists():  # the systems that record what they did, per input record
        data = json.loads(out.read_bytes())
        consumed = sum(1 for ts in data["ts"] if ts < t_lat)
        res.decoded = consumed
        if consumed != run.events and res.complete:
            res.notes.append(f"processed {consumed} throughput events (at-least-once)")
        if name not in ALERTING:
            lats = [lat for ts, lat in zip(data["ts"], data["lat_ms"], strict=True)
                    if ts >= t_lat]
            res.latency_events = len(lats)
            res.p50_ms, res.p99_ms = _p50_p99(lats)
    if name in ALERTING:
        lats = await _alert_latencies(run.bootstrap, routing_prefix(run, name), t_lat)
        res.latency_events = len(lats)
        res.p50_ms, res.p99_ms = _p50_p99(lats)
        res.notes.append("latency over the latency phase's events that raised an alert")
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
