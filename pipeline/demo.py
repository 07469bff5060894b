"""`leadflow demo`: the whole pipeline on one machine, with a live view of what it emits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from rich.console import Console
from rich.live import Live

from pipeline.demoview import LiveSummary, WorkerStatus
from pipeline.devkafka.ports import port_free
from pipeline.errors import BrokerError, ConfigError, LeadflowError
from pipeline.kafka.security import KafkaSecurity
from pipeline.settings import Settings

console = Console()
#: How often piped output gets the summary line.
SUMMARY_EVERY_S = 10.0


class DemoError(LeadflowError):
    """The demo could not run, or its worker failed."""

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class DemoRun:
    """What makes one demo run's traffic its own: a seed and an id prefix from its start.

    The worker's state (tables, dedup) outlives a run on purpose. Replaying one fixed seed
    made every message of a second run a duplicate (same message ids), and fresh message ids
    on the same user ids would pile a second journey onto leads that already closed. New
    leads per run keep both runs' state sane; `leadflow demo --reset` starts from nothing.
    """

    seed: int
    id_prefix: str

    @classmethod
    def starting(cls, now: datetime) -> DemoRun:
        ms = int(now.timestamp() * 1000)
        tag = ""
        n = ms
        while n:
            n, d = divmod(n, 36)
            tag = _BASE36[d] + tag
        return cls(seed=ms, id_prefix=f"{tag or '0'}-")

    def lead(self, n: int) -> str:
        """The user id of visitor `n` of this run (once it identifies)."""
        return f"user-{self.id_prefix}{n:07d}"


def reset_targets(settings: Settings) -> list[tuple[Path, str]]:
    """What `leadflow demo --reset` deletes, with why each is part of the demo's state.

    Only the local development broker's data: on a configured cluster the topics may be
    shared, so they are never deleted from here (ConfigError says what to do instead).
    """
    from pipeline.devkafka.local import local_status

    if settings.bootstrap_servers:
        raise ConfigError(
            "leadflow demo --reset only resets the local development broker; with "
            f"LEADFLOW_BOOTSTRAP_SERVERS={settings.bootstrap_servers} delete the demo's topics "
            f"there yourself, and {settings.worker_state_dir}")
    running = local_status(settings)
    if running is not None:
        raise ConfigError(
            f"the local Kafka broker is running (pid {running.pid}, {running.bootstrap}): "
            "stop the demo, then `leadflow kafka down`, and run `leadflow demo --reset` again")
    candidates = [
        (settings.worker_state_dir,
         "the worker's tables (RocksDB): leads, identities, owners, seen message ids"),
        (settings.kafka_dir / "data",
         "the local broker's data: topics, changelogs and committed offsets"),
        (settings.home / "demo-worker.log", "the demo worker's log"),
    ]
    return [(path, why) for path, why in candidates if path.exists()]


def reset_demo(settings: Settings, say: Callable[[str], None]) -> list[Path]:
    """Delete the demo's state (see `reset_targets`), saying what goes before it goes.

    The Kafka jars stay: downloading them again is the slow part of a first run.
    """
    targets = reset_targets(settings)
    if not targets:
        say("nothing to reset: no demo state in " + str(settings.home))
    for path, why in targets:
        say(f"deleting {path} ({why})")
    for path, _ in targets:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return [path for path, _ in targets]


async def _tail(bootstrap: str, settings: Settings, stop: asyncio.Event,
                counts: dict[str, int], view: LiveSummary, live: bool) -> None:
    from aiokafka import AIOKafkaConsumer

    t = settings.topics
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                enable_auto_commit=False,
                                **KafkaSecurity.from_settings(settings).client_kwargs())
    await consumer.start()
    consumer.subscribe(pattern=rf"^({t.stage_changes}|{t.deadletter}|{t.routing_prefix}.*)$"
                       .replace(".", r"\.").replace(r"\.*)", ".*)"))
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    counts[tp.topic] = counts.get(tp.topic, 0) + 1
                    try:
                        data = orjson.loads(rec.value or b"{}")
                    except orjson.JSONDecodeError:
                        continue
                    if not isinstance(data, dict):
                        continue
                    line = view.feed(tp.topic, data)
                    if line is not None and not live:
                        console.print(line, highlight=False)
    finally:
        await consumer.stop()


async def _worker_status(port: int) -> WorkerStatus:
    """The demo worker's /readyz and events counter (unreachable while it starts)."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    base = f"http://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.get(f"{base}/readyz") as r:
                ready = orjson.loads(await r.read())
            async with s.get(f"{base}/metrics") as r:
                text = await r.text()
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
        return WorkerStatus()
    scored = sum(sample.value for fam in text_string_to_metric_families(text)
                 for sample in fam.samples if sample.name == "leadflow_events_scored_total")
    return WorkerStatus(reachable=True, ready=bool(ready.get("ready")),
                        assigned_partitions=int(ready.get("assigned_partitions") or 0),
                        recovering=bool(ready.get("recovering")), events_scored=scored)


async def _main(settings: Settings, rate: float, visitors: int, run: DemoRun) -> None:
    from pipeline.devkafka.local import ensure_local_broker, resolve_bootstrap
    from pipeline.kafka.topics import ensure_topics, topic_specs
    from pipeline.simulator import run as simulate
    from pipeline.stream.worker import load_configured_rules

    # aiokafka logs retried produces and offset fetches (NotLeaderForPartition) at ERROR while
    # fresh topics elect leaders; the demo's clients retry them, and real failures raise.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: closing the terminal must not leave the worker and the broker running.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    if not port_free(settings.web_port):
        raise DemoError(
            f"port {settings.web_port} (the worker's lead API) is in use: a worker of an "
            "earlier demo may still run. Stop it (`ss -ltnp 'sport = :"
            f"{settings.web_port}'` shows its pid) or run `leadflow demo --web-port "
            f"{settings.web_port + 1}`")

    started_broker = False
    try:
        bootstrap = resolve_bootstrap(settings)
        if not settings.bootstrap_servers:
            console.print("reusing the local broker already running (`leadflow kafka down` "
                          "stops it)")
    except BrokerError:
        console.print("no Kafka configured: starting a local broker (leadflow kafka up)…")
        bootstrap = ensure_local_broker(settings)
        started_broker = True
    console.print(f"Kafka at [bold]{bootstrap}[/]")
    rules = load_configured_rules(settings)
    security = KafkaSecurity.from_settings(settings)
    report = await ensure_topics(bootstrap, topic_specs(settings, teams=rules.teams()),
                                 security=security)
    console.print(f"topics ready ({report})")

    log_path = settings.home / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LEADFLOW_BOOTSTRAP_SERVERS": bootstrap,
           "LEADFLOW_WEB_PORT": str(settings.web_port)}
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "worker", "--loglevel", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    console.print(f"worker started (pid {worker.pid}, log {log_path}); lead API on "
                  f"http://{settings.web_host}:{settings.web_port}/leads/<id>, e.g. "
                  f"/leads/{run.lead(7)} (this run's leads are user-{run.id_prefix}…)")
    # The console reads the worker on LEADFLOW_WEB_PORT: name it when the demo moved it.
    default_port = type(settings).model_fields["web_port"].default
    port_env = "" if settings.web_port == default_port else \
        f"LEADFLOW_WEB_PORT={settings.web_port} "
    console.print(f"web pages for sales (lead pages, team queues, funnel): run "
                  f"`{port_env}leadflow console` in another terminal, then open "
                  f"http://{settings.console_host}:{settings.console_port}", highlight=False)
    counts: dict[str, int] = {}
    t = settings.topics
    view = LiveSummary(t.stage_changes, t.deadletter, t.routing_prefix)
    # On a terminal the summary is redrawn in place; piped, every notable event is a line
    # and the summary a line every SUMMARY_EVERY_S.
    live = Live(view.render(), console=console, refresh_per_second=2,
                redirect_stdout=False) if console.is_terminal else None
    topics = {"web": t.web, "email": t.email, "product": t.product, "crm": t.crm}
    tail = asyncio.create_task(_tail(bootstrap, settings, stop, counts, view, live is not None))
    sim = asyncio.create_task(
        simulate(bootstrap, topics, rate=rate, visitors=visitors, stop=stop, progress=False,
                 seed=run.seed, id_prefix=run.id_prefix, security=security)
    )
    announced = False
    failed: int | None = None
    last_line = loop.time()
    if live is not None:
        live.start()
    try:
        while not stop.is_set():
            if worker.poll() is not None:
                failed = worker.returncode
                break
            if sim.done() and not sim.cancelled() and not announced:
                console.print(f"simulator finished: {sim.result()} messages sent; "
                              "still watching (Ctrl-C to stop)")
                announced = True
            view.observe(await _worker_status(settings.web_port), loop.time())
            if live is not None:
                live.update(view.render())
            elif loop.time() - last_line >= SUMMARY_EVERY_S:
                console.print(view.line(), highlight=False)
                last_line = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        stop.set()
        if live is not None:
            live.stop()
        console.print("stopping…")
        for task in (sim, tail):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, 60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if started_broker:
            from pipeline.devkafka.local import stop_local_broker

            stop_local_broker(settings)
        console.print(view.line(), highlight=False)
        console.print(f"stopped. messages seen per topic: {counts}")
    if failed is not None:
        raise DemoError(f"the worker exited with status {failed}; its log is {log_path}")


def run_demo(settings: Settings, *, rate: float, visitors: int, reset: bool = False) -> None:
    """Run the demo until Ctrl-C; `reset` first deletes what earlier runs left."""
    if reset:
        reset_demo(settings, lambda line: console.print(line, highlight=False))
    asyncio.run(_main(settings, rate, visitors, DemoRun.starting(datetime.now(UTC))))
