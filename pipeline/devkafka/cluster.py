"""A real local multi-node Apache Kafka cluster (KRaft) for tests: Maven Central jars, no Docker.

Every node is a combined broker+controller JVM, like ``LocalBroker`` (whose launch, format
and stop code it reuses), with its own node id, data folder, ports and log; the controller
quorum is static (``controller.quorum.voters`` lists every node), so any majority of the
nodes keeps the cluster going. Internal topics (consumer offsets, transactions) and new
topics are replicated to every node (up to 3) with ``min.insync.replicas`` 2, as on a
production cluster: one node can die and nothing acknowledged is lost.

    cluster = LocalCluster(tmp / "kafka", jars, nodes=3)
    cluster.start()                # all nodes; returns once metadata lists all 3 brokers
    cluster.bootstrap              # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    cluster.kill(2)                # SIGKILL node 2
    cluster.wait_brokers({1, 3})   # the controller fenced it
    cluster.restart(2)             # same ports and data; back in the cluster
    cluster.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.devkafka.broker import (
    LocalBroker,
    _in_thread,
    _tail_file,
    new_cluster_id,
    require_java,
)
from pipeline.devkafka.jars import Progress, _check_version, _lib_complete
from pipeline.devkafka.ports import HOST
from pipeline.errors import BrokerError
from pipeline.settings import KAFKA_VERSION

#: Broker settings that make a small test cluster react within seconds on a loaded machine:
#: a dead broker is fenced after 6 s (default 9 s), a replica that stops fetching leaves the
#: ISR after 10 s (default 30 s; acks=all writes wait for it until then), and fewer threads.
FAST_FAILOVER: dict[str, str] = {
    "broker.session.timeout.ms": "6000",
    "broker.heartbeat.interval.ms": "1000",
    "replica.lag.time.max.ms": "10000",
    "num.io.threads": "2",
    "num.replica.fetchers": "1",
    "background.threads": "4",
}


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; else its default)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999


def _bind_listen_port(attempts: int = 200) -> socket.socket:
    """A socket bound to a free port on HOST below the ephemeral range (bind(0) if none)."""
    low = _ephemeral_ports()[0]
    ports = list(range(10000, low))
    random.shuffle(ports)
    for port in ports[:attempts]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, port))
        except OSError:
            s.close()
            continue
        return s
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    return s


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _meta_cluster_id(data_dir: Path) -> str | None:
    """The cluster id a node's data folder was formatted with, if it was."""
    with contextlib.suppress(OSError):
        for line in (data_dir / "data" / "meta.properties").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id" and value.strip():
                return value.strip()
    return None


class ClusterNode(LocalBroker):
    """One node of a ``LocalCluster``: a LocalBroker with its own node id and the shared quorum.

    Not started on its own (a node alone has no quorum and never answers): the cluster
    formats and launches all nodes, then waits for them together.
    """

    def __init__(self, cluster: LocalCluster, node_id: int, data_dir: Path) -> None:
        super().__init__(data_dir, cluster.jars_dir, cluster.version, cluster.heap_mb)
        self.node_id = node_id
        self.cluster = cluster

    def cluster_id(self) -> str:
        """Every node is formatted with the cluster's id (a node of another cluster is refused)."""
        return self.cluster.cluster_id

    def _write_properties(self) -> Path:
        # LocalBroker's single-node file, with the node id, the quorum and the replication
        # of a cluster on top (so that broker.py stays the one place for the common settings).
        path = super()._write_properties()
        props = _read_properties(path)
        props.update(self.cluster.node_properties(self))
        path.write_text(
            f"# Written by leadflow (pipeline/devkafka/cluster.py): node {self.node_id} of "
            f"{len(self.cluster.nodes)}.\n" + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        return path

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def alive(self) -> bool:
        """Whether this node's JVM (started by us) is running."""
        return self._proc is not None and self._proc.poll() is None

    def prepare(self) -> Path:
        """Check the ports are free, write the properties and format the data folder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._pick_ports()  # ports are fixed by the cluster: this only checks they are free
        props = self._write_properties()
        self._format(props)
        return props

    def launch(self, props: Path) -> None:
        """Start the JVM (returns at once; the cluster waits for readiness)."""
        if self.alive:
            raise BrokerError(f"node {self.node_id} already runs (pid {self.pid})")
        self._launch(props)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the JVM's process group (it leads its own session)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the JVM to exit; returns whether it did."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def log_tail(self, n: int = 20) -> str:
        """The last lines of this node's log."""
        return _tail_file(self.log_file, n)


class LocalCluster:
    """``nodes`` KRaft nodes (broker+controller each) on 127.0.0.1, in ``base_dir/node-<id>``."""

    def __init__(
        self,
        base_dir: Path,
        jars_dir: Path,
        version: str = KAFKA_VERSION,
        *,
        nodes: int = 3,
        heap_mb: int = 256,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir).resolve()
        self.jars_dir = Path(jars_dir).resolve()
        self.version = version
        self.heap_mb = heap_mb
        #: Replication of internal and new topics: every node, at most 3.
        self.replication_factor = min(3, nodes)
        #: In-sync copies an acks=all write needs: 2 from 3 nodes up (one node may die);
        #: with 2 nodes, 2 would stop every write when either dies, so 1.
        self.min_insync_replicas = 2 if nodes >= 3 else 1
        self.extra_properties = dict(FAST_FAILOVER if properties is None else properties)
        self.nodes: dict[int, ClusterNode] = {
            i: ClusterNode(self, i, self.base_dir / f"node-{i}") for i in range(1, nodes + 1)
        }
        # A cluster started again on the same folders keeps its id (its data says which).
        ids = {cid for n in self.nodes.values() if (cid := _meta_cluster_id(n.data_dir))}
        if len(ids) > 1:
            raise BrokerError(f"the node folders in {self.base_dir} belong to different "
                              f"clusters: {sorted(ids)}")
        self.cluster_id: str = ids.pop() if ids else new_cluster_id()

    # -- addresses -----------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma separated (what Kafka clients and leadflow take)."""
        return ",".join(n.bootstrap for n in self.nodes.values())

    def bootstrap_of(self, node_ids: Iterable[int]) -> str:
        """The client addresses of some nodes only (e.g. the ones still alive)."""
        return ",".join(self.nodes[i].bootstrap for i in node_ids)

    def alive(self) -> list[int]:
        """Ids of the nodes whose JVM runs."""
        return [i for i, n in self.nodes.items() if n.alive]

    def node_properties(self, node: ClusterNode) -> dict[str, str]:
        """What a node's server.properties has on top of LocalBroker's single-node file."""
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes.values())
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        return {
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            **self.extra_properties,
        }

    # -- start ---------------------------------------------------------------------------

    def _assign_ports(self) -> None:
        # Hold every socket while picking so that all 2N ports differ; a restarted node
        # keeps its ports (the others' quorum.voters and clients' bootstrap name them).
        # Ports come from below the kernel's ephemeral range: a port picked by bind(0) is
        # free only until the JVM binds it seconds later, and meanwhile any outgoing
        # connection may get it as its local port; a client retrying 127.0.0.1:P can even
        # connect to itself on P (seen: "failed to bind to 127.0.0.1:54351: Address
        # already in use" while the other nodes' clients polled it).
        held: list[socket.socket] = []
        try:
            for node in self.nodes.values():
                for name in ("port", "controller_port"):
                    if getattr(node, name) == 0:
                        s = _bind_listen_port()
                        held.append(s)
                        setattr(node, name, int(s.getsockname()[1]))
        finally:
            for s in held:
                s.close()

    def _check_can_start(self) -> None:
        _check_version(self.version)
        require_java()
        if not _lib_complete(self.jars_dir, self.version):
            raise BrokerError(
                f"no Kafka {self.version} jars in {self.jars_dir}: resolve them first "
                "(pipeline.devkafka.jars.resolve_jars)"
            )

    def start(self, timeout_s: float = 120.0, progress: Progress | None = None) -> str:
        """Format and start every node; return the bootstrap string once metadata lists all.

        On any failure every node started here is killed and BrokerError says which node
        failed, with the last lines of its log.
        """
        self._check_can_start()
        self._assign_ports()
        nodes = list(self.nodes.values())
        try:
            # Formatting is a JVM per node (seconds each on a small machine): in parallel.
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                props = list(pool.map(lambda n: n.prepare(), nodes))
            if progress:
                progress(f"starting {len(nodes)} Kafka nodes at {self.bootstrap}…")
            for node, path in zip(nodes, props, strict=True):
                node.launch(path)
            self.wait_brokers(set(self.nodes), timeout_s=timeout_s)
        except BaseException:
            self.stop(timeout_s=0)
            raise
        return self.bootstrap

    def restart(self, node_id: int, timeout_s: float = 120.0) -> None:
        """Start a stopped or killed node again (same ports and data); wait until it is back."""
        node = self.nodes[node_id]
        self._check_can_start()
        props = node.prepare()
        node.launch(props)
        try:
            self.wait_brokers(set(self.alive()), timeout_s=timeout_s)
        except BaseException:
            node._kill_now()
            raise

    # -- readiness -----------------------------------------------------------------------

    def brokers(self, timeout_s: float = 5.0) -> tuple[set[int], int | None]:
        """(ids of the brokers the metadata lists, the active controller's id), asked through
        the live nodes; (empty set, None) if none answers."""
        bootstrap = self.bootstrap_of(self.alive())
        if not bootstrap:
            return set(), None
        result = _in_thread(lambda: asyncio.run(_describe(bootstrap, timeout_s)))
        assert isinstance(result, tuple)
        return result

    def views(self, node_ids: Iterable[int], timeout_s: float = 5.0) -> dict[int, set[int]]:
        """Per node asked: the brokers its metadata lists (empty if it did not answer).
        Nodes update their metadata cache on their own, so right after a change they differ."""
        ids = sorted(node_ids)
        bootstrap = self.bootstrap_of(i for i in ids if self.nodes[i].alive)
        if not bootstrap:
            return {i: set() for i in ids}
        result = _in_thread(lambda: asyncio.run(_views(bootstrap, ids, timeout_s)))
        assert isinstance(result, dict)
        return result

    def wait_brokers(self, expected: set[int], timeout_s: float = 60.0) -> None:
        """Wait until every node of ``expected`` answers a metadata request listing exactly
        the brokers ``expected`` (a killed one drops out once the controller fences it);
        BrokerError with the nodes' logs on timeout."""
        deadline = time.monotonic() + timeout_s
        seen: dict[int, set[int]] = {}
        while True:
            for i in expected:
                node = self.nodes[i]
                if node._proc is not None and not node.alive:
                    raise BrokerError(
                        f"Kafka node {i} exited (code {node._proc.returncode}); last lines "
                        f"of {node.log_file}:\n{node.log_tail()}"
                    )
            seen = self.views(expected, timeout_s=3.0)
            if all(view == expected for view in seen.values()):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- node {i} ({n.log_file}):\n{n.log_tail(8)}" for i, n in self.nodes.items()
                )
                raise BrokerError(
                    f"the Kafka cluster at {self.bootstrap} does not list brokers "
                    f"{sorted(expected)} on every node after {timeout_s:.0f} s (node: brokers "
                    f"{ {i: sorted(v) for i, v in seen.items()} })\n{logs}"
                )
            time.sleep(0.5)

    # -- stop ----------------------------------------------------------------------------

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL: a crash, no controlled shutdown) to one node and wait
        for its JVM to exit."""
        node = self.nodes[node_id]
        if not node.alive:
            raise BrokerError(f"node {node_id} is not running")
        node.signal(sig)
        if not node.wait_exit(30.0):
            node.signal(signal.SIGKILL)
            node.wait_exit(10.0)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop every node: SIGTERM to all at once, SIGKILL to those still up after
        ``timeout_s`` (a node whose quorum is gone may wait long in controlled shutdown)."""
        live = [n for n in self.nodes.values() if n.alive]
        for n in live:
            n.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in live:
            if not n.wait_exit(max(0.0, deadline - time.monotonic())):
                n.signal(signal.SIGKILL)
                n.wait_exit(10.0)


async def _describe(bootstrap: str, timeout_s: float) -> tuple[set[int], int | None]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout_s * 1000))
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        info = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        ids = {int(b["node_id"]) for b in info.get("brokers", [])}
        controller = info.get("controller_id")
        return ids, (int(controller) if controller is not None and controller >= 0 else None)
    except Exception:
        return set(), None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _views(bootstrap: str, node_ids: list[int], timeout_s: float) -> dict[int, set[int]]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.metadata import MetadataRequest

    out: dict[int, set[int]] = {i: set() for i in node_ids}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout_s * 1000))
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        for i in node_ids:
            with contextlib.suppress(Exception):
                # The admin's public calls ask a random node; this asks node i itself.
                resp = await asyncio.wait_for(
                    admin._send_request(MetadataRequest([]), node_id=i), timeout_s)
                out[i] = {int(b["node_id"]) for b in resp.to_object()["brokers"]}
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return out
