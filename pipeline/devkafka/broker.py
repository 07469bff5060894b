"""A real local Apache Kafka broker for development and tests: Maven Central jars, no Docker.

Each broker is a single-node KRaft broker+controller JVM (``kafka.Kafka``) run from the shared
jar cache (``pipeline.devkafka.jars``), with its own data folder, free or chosen ports, and a
JSON state file so that other processes find it (``pipeline.devkafka.local``).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.devkafka.jars import (
    Progress,
    _check_version,
    _file_lock,
    _lib_complete,
    _tail_text,
)
from pipeline.devkafka.ports import HOST, port_free
from pipeline.errors import BrokerError, ConfigError
from pipeline.settings import KAFKA_VERSION

if TYPE_CHECKING:
    from pipeline.devkafka.secure_listener import ListenerSecurity

STATE_FILE = "broker.json"
LOG_FILE = "kafka.log"
#: Largest message the local broker accepts; a few MB so that big batches never hit the limit.
MESSAGE_MAX_BYTES = 5 * 1024 * 1024

_HERE = Path(__file__).resolve().parent
LOG4J = _HERE / "log4j.properties"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka's ``Uuid.randomUuid()`` makes it (base64url, no padding)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka redraws these: they look like a CLI option
            return cid


def _tail_file(path: Path, n: int = 20) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), n)
    except OSError:
        return "(no log)"


def require_java() -> None:
    """Raise BrokerError unless a ``java`` executable is on PATH."""
    if shutil.which("java") is None:
        raise BrokerError(
            "Java not found: the local Kafka broker needs a Java runtime; install OpenJDK 17 "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set "
            "LEADFLOW_BOOTSTRAP_SERVERS to an existing broker"
        )


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie whose parent is someone else: gone for our purposes
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is the kafka.Kafka JVM of ``data_dir`` (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(data_dir / "server.properties") in args


def _in_thread(fn: Callable[[], object]) -> object:
    # Our callers may already run an event loop (the demo is async), where asyncio.run fails;
    # a short-lived thread with its own loop works in both cases.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


async def _metadata_ok(bootstrap: str, timeout_s: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout_s * 1000))
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        info = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return bool(info.get("brokers"))
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether a Kafka broker at ``bootstrap`` answers a metadata request with itself in it."""
    host, _, port = bootstrap.rpartition(":")
    try:  # cheap TCP check first: aiokafka logs an error for every refused connection
        with socket.create_connection((host or HOST, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError):
        return False
    return bool(_in_thread(lambda: asyncio.run(_metadata_ok(bootstrap, timeout_s))))


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerState:
    """What the state file of a running local broker says."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    data_dir: str
    version: str
    log: str
    started_at: float


class LocalBroker:
    """A single-node KRaft Kafka broker (broker+controller in one JVM) in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        jars_dir: Path,
        version: str = KAFKA_VERSION,
        heap_mb: int = 512,
        port: int = 0,
        controller_port: int = 0,
        *,
        security: ListenerSecurity | None = None,
        secure_port: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.jars_dir = Path(jars_dir).resolve()
        self.version = version
        self.heap_mb = heap_mb
        self.port = port
        self.controller_port = controller_port
        #: An extra SASL_SSL listener (pipeline.devkafka.secure_listener), e.g. for security tests.
        self.security = security
        self.secure_port = secure_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def state_file(self) -> Path:
        """The JSON file other processes read to find this broker."""
        return self.data_dir / STATE_FILE

    @property
    def log_file(self) -> Path:
        """The broker JVM's stdout and stderr."""
        return self.data_dir / LOG_FILE

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` (the port is known once started)."""
        return f"{HOST}:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_SSL listener (only with ``security``)."""
        if self.security is None:
            raise ConfigError("this broker has no SASL_SSL listener (no security given)")
        return f"{HOST}:{self.secure_port}"

    def _port_names(self) -> tuple[str, ...]:
        return ("port", "controller_port", "secure_port") if self.security else (
            "port", "controller_port")

    # -- state ---------------------------------------------------------------------------------

    def status(self) -> BrokerState | None:
        """The running broker of this data folder, or None; a stale state file is removed."""
        return read_state(self.data_dir)

    # -- start ---------------------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0, progress: Progress | None = None) -> BrokerState:
        """Start the broker and wait until it answers a metadata request.

        Raises BrokerError if this data folder's broker already runs (see ``status()``),
        Java is missing, a port is taken, or the JVM exits or stays silent past ``timeout_s``.
        """
        _check_version(self.version)
        require_java()
        if not _lib_complete(self.jars_dir, self.version):
            raise BrokerError(
                f"no Kafka {self.version} jars in {self.jars_dir}: resolve them first "
                "(pipeline.devkafka.jars.resolve_jars)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir / ".lock"):
            running = self.status()
            if running is not None:
                raise BrokerAlreadyRunning(running)
            self._pick_ports()
            props = self._write_properties()
            self._format(props)
            self._launch(props)
            try:
                self._wait_ready(timeout_s, progress)
            except BaseException:
                self._kill_now()
                raise
            assert self._proc is not None
            state = BrokerState(
                pid=self._proc.pid, bootstrap=self.bootstrap, port=self.port,
                controller_port=self.controller_port, data_dir=str(self.data_dir),
                version=self.version, log=str(self.log_file), started_at=time.time(),
            )
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(state), indent=1))
            os.replace(tmp, self.state_file)
            return state

    def _pick_ports(self) -> None:
        for name in self._port_names():
            wanted = getattr(self, name)
            if wanted and not port_free(wanted):
                what = "Kafka port" if name == "port" else "Kafka controller port"
                raise BrokerError(f"{what} {wanted} on {HOST} is already in use by another process")
        # Hold both sockets while picking so that the two free ports differ.
        held: list[socket.socket] = []
        try:
            for name in self._port_names():
                if getattr(self, name) == 0:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    held.append(s)
                    s.bind((HOST, 0))
                    setattr(self, name, int(s.getsockname()[1]))
        finally:
            for s in held:
                s.close()
        if len({getattr(self, n) for n in self._port_names()}) < len(self._port_names()):
            raise ConfigError(f"two of the Kafka ports are the same: {self._port_names()}")

    def _write_properties(self) -> Path:
        data = self.data_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # A static voter set: works on every 3.x and needs no --standalone when formatting.
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            # One node: every internal topic must live with replication factor 1.
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            # Consumers join a group at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are made on purpose (leadflow topics create); a typo must not make one.
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(MESSAGE_MAX_BYTES),
            "replica.fetch.max.bytes": str(MESSAGE_MAX_BYTES),
            # A 2-core development machine: fewer threads and a small cleaner buffer
            # (the default 128 MB would take a quarter of a 512 MB heap).
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.threads": "1",
        }
        if self.security is not None:
            props = self.security.listener_properties(props, self.secure_port, HOST)
        path = self.data_dir / "server.properties"
        path.write_text(
            "# Written by leadflow (pipeline/devkafka/broker.py) at every start.\n"
            + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        return path

    def _java_base(self) -> list[str]:
        return [
            "java", f"-Dlog4j.configuration=file:{LOG4J}", "-Djava.awt.headless=true",
            "-cp", str(self.jars_dir / "*"),
        ]

    def cluster_id(self) -> str:
        """The cluster id of the formatted data folder, or a new one if it is not formatted."""
        meta = self.data_dir / "data" / "meta.properties"
        with contextlib.suppress(OSError):
            for line in meta.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id" and value.strip():
                    return value.strip()
        return new_cluster_id()

    def _format(self, props: Path) -> None:
        # --ignore-formatted lets a second start keep its data, but only with the *same*
        # cluster id (3.9.1 refuses another one: "Invalid cluster.id in .../meta.properties").
        cmd = [
            *self._java_base(), "-Xmx256m", "kafka.tools.StorageTool", "format",
            "-t", self.cluster_id(), "-c", str(props), "--ignore-formatted",
            *(self.security.format_args() if self.security else ()),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise BrokerError("formatting the Kafka data folder took over 120 s") from None
        if proc.returncode != 0:
            tail = _tail_text(proc.stdout + proc.stderr, 15)
            raise BrokerError(
                f"formatting {self.data_dir / 'data'} failed (exit {proc.returncode}):\n{tail}"
            )

    def _launch(self, props: Path) -> None:
        java_base = self._java_base()
        cmd = [
            java_base[0], f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", *java_base[1:],
            "kafka.Kafka", str(props),
        ]
        with open(self.log_file, "ab") as log:
            banner = f"\n=== leadflow: starting Kafka {self.version} at {self.bootstrap}\n"
            log.write(banner.encode())
            log.flush()
            # Its own session/process group: Ctrl-C in the terminal that ran `kafka up` does
            # not reach it, and stop() can signal the whole group.
            self._proc = subprocess.Popen(
                cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _wait_ready(self, timeout_s: float, progress: Progress | None) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"the Kafka broker exited (code {code}) while starting; last lines of "
                    f"{self.log_file}:\n{_tail_file(self.log_file)}"
                )
            if broker_answers(self.bootstrap, timeout_s=3.0):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the Kafka broker did not answer at {self.bootstrap} within {timeout_s:.0f} s;"
                    f" last lines of {self.log_file}:\n{_tail_file(self.log_file)}"
                )
            if progress and not told and time.monotonic() > deadline - timeout_s + 10:
                progress("still waiting for the broker (a cold JVM is slow on small machines)…")
                told = True
            time.sleep(0.5)

    def _kill_now(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop this folder's broker (SIGTERM, then SIGKILL after ``timeout_s``).

        Returns whether a broker was running. Works from any process via the state file.
        """
        state = self.status()
        pid = state.pid if state else (self._proc.pid if self._proc else None)
        was_running = pid is not None and _pid_alive(pid)
        if pid is not None and was_running:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                if self._proc is not None and self._proc.pid == pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(0.2)
                else:
                    time.sleep(0.2)
            if _pid_alive(pid):
                _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1)
        self.state_file.unlink(missing_ok=True)
        return was_running


class BrokerAlreadyRunning(BrokerError):
    """The data folder's broker runs already (``state`` says where)."""

    def __init__(self, state: BrokerState) -> None:
        super().__init__(f"already running at {state.bootstrap} (pid {state.pid})")
        self.state = state


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the JVM leads its own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def read_state(data_dir: Path) -> BrokerState | None:
    """The live broker recorded in ``data_dir``'s state file; a stale file is removed silently."""
    data_dir = Path(data_dir).resolve()
    path = data_dir / STATE_FILE
    try:
        state = BrokerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)  # unreadable: written by a crashed or older run
        return None
    if not _is_our_broker(state.pid, data_dir):
        path.unlink(missing_ok=True)
        return None
    return state


