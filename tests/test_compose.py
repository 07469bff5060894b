"""docker-compose.kafka.yml: a single-node KRaft broker shaped like the local one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.kafka.yml"


def _service() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert list(services) == ["kafka"]
    svc: dict[str, Any] = services["kafka"]
    return svc


def test_image_and_port() -> None:
    svc = _service()
    assert svc["image"] == "apache/kafka:3.9.1"
    assert any(str(p).endswith("9092:9092") for p in svc["ports"])


def test_kraft_single_node_env() -> None:
    env = {k: str(v) for k, v in _service()["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.startswith("1@")
    controller_port = voters.rsplit(":", 1)[1]
    assert f"CONTROLLER://:{controller_port}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.endswith(("//127.0.0.1:9092", "//localhost:9092")) for a in advertised)
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listener_names = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    assert listener_names <= set(protocols)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listener_names
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert len(env["CLUSTER_ID"]) == 22


def test_healthcheck() -> None:
    hc = _service()["healthcheck"]
    test = " ".join(hc["test"]) if isinstance(hc["test"], list) else hc["test"]
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in test
    assert "--bootstrap-server" in test
    assert hc["retries"] >= 1


# -- deploy/compose/cluster.yml: three brokers, N workers, collector, Prometheus, Grafana ----

CLUSTER = COMPOSE.parent / "deploy" / "compose" / "cluster.yml"
REPO = COMPOSE.parent


def _cluster() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CLUSTER.read_text())
    return doc


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in svc["environment"].items()}


def _brokers() -> dict[str, dict[str, Any]]:
    svcs = _cluster()["services"]
    return {name: svc for name, svc in svcs.items() if svc.get("image", "").startswith(
        "apache/kafka:")}


def test_cluster_has_three_combined_nodes_in_one_static_voter_set() -> None:
    brokers = _brokers()
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    ids = {}
    cluster_ids = set()
    voter_sets = set()
    for name, svc in brokers.items():
        assert svc["image"] == "apache/kafka:3.9.1"
        env = _env(svc)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        ids[env["KAFKA_NODE_ID"]] = svc["hostname"]
        assert svc["hostname"] == name
        cluster_ids.add(env["CLUSTER_ID"])
        voter_sets.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        controller_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")[0].rsplit(":", 1)[1]
        assert f"CONTROLLER://:{controller_port}" in env["KAFKA_LISTENERS"]
        protocols = dict(p.split(":") for p in
                         env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        names = {e.split("://")[0] for e in env["KAFKA_LISTENERS"].split(",")}
        assert names <= set(protocols)
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in names
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        # Each node advertises its own name in the network, and its own host port.
        advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        assert f"PLAINTEXT://{name}:19092" in advertised
        host_port = next(a for a in advertised if a.startswith("PLAINTEXT_HOST://"))
        published = [str(p) for p in svc["ports"]]
        assert any(p.startswith(f"127.0.0.1:{host_port.rsplit(':', 1)[1]}:") for p in published)
    assert len(cluster_ids) == 1 and len(next(iter(cluster_ids))) == 22
    assert len(voter_sets) == 1, "every node must have the same voter set"
    voters = dict(v.split("@") for v in next(iter(voter_sets)).split(","))
    assert len(voters) == 3
    assert {i: hp.split(":")[0] for i, hp in voters.items()} == ids
    host_ports = {str(p).split(":")[1] for svc in brokers.values() for p in svc["ports"]}
    assert len(host_ports) == 3  # no two nodes publish the same host port


def test_cluster_replication_is_three_with_min_isr_two() -> None:
    for name, svc in _brokers().items():
        env = _env(svc)
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
            assert env[key] == "3", (name, key)
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
    for svc in _leadflow_services().values():
        assert _env(svc)["LEADFLOW_REPLICATION_FACTOR"] == "3"


def _leadflow_services() -> dict[str, dict[str, Any]]:
    svcs = _cluster()["services"]
    return {n: s for n, s in svcs.items() if n.startswith("leadflow-")}


def test_every_leadflow_service_points_at_all_three_brokers() -> None:
    lf = _leadflow_services()
    assert set(lf) == {"leadflow-topics", "leadflow-worker", "leadflow-collector"}
    internal = {f"{n}:19092" for n in _brokers()}
    for name, svc in lf.items():
        env = _env(svc)
        assert set(env["LEADFLOW_BOOTSTRAP_SERVERS"].split(",")) == internal, name
        for broker in _brokers():
            assert svc["depends_on"][broker]["condition"] == "service_healthy", name
        assert svc["image"] == "leadflow:0.1.0"
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        context = (CLUSTER.parent / svc["build"]["context"]).resolve()
        assert (context / svc["build"]["dockerfile"]).is_file()
    assert lf["leadflow-topics"]["command"] == ["topics", "create"]
    assert lf["leadflow-worker"]["command"][0] == "worker"
    assert lf["leadflow-collector"]["command"][0] == "collector"


def test_workers_can_be_scaled() -> None:
    """`--scale leadflow-worker=N` fails on fixed names or published host ports."""
    worker = _cluster()["services"]["leadflow-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert not any(":" in str(v) and not str(v).startswith("/") for v in
                   worker.get("volumes", []))  # no shared named volume for RocksDB
    env = _env(worker)
    assert env["LEADFLOW_WEB_HOST"] == "0.0.0.0"
    # ...so the lead API needs a token: from the shell, required (no well-known default).
    assert env["LEADFLOW_API_TOKEN"].startswith("${LEADFLOW_API_TOKEN:?")
    assert int(env["LEADFLOW_PARTITIONS"]) >= 3
    assert int(env["LEADFLOW_STANDBY_REPLICAS"]) >= 1
    assert worker["depends_on"]["leadflow-topics"]["condition"] == (
        "service_completed_successfully")
    assert "VOLUME" in (REPO / "deploy" / "docker" / "Dockerfile").read_text()


def test_cluster_volumes_exist() -> None:
    """Bind mounts resolve from this file's folder (a stand-alone compose file) to files in the
    repo; named volumes are declared."""
    doc = _cluster()
    declared = set(doc["volumes"])
    binds = 0
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            source = str(vol).split(":")[0]
            if source.startswith((".", "/")):
                host = (CLUSTER.parent / source).resolve()
                assert host.exists(), f"{name}: {host}"
                assert REPO in host.parents, f"{name}: {host} is outside the repo"
                binds += 1
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    assert binds == 3


def test_cluster_prometheus_finds_every_worker() -> None:
    prom = _cluster()["services"]["prometheus"]
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    folder, _, filename = config_arg.split("=", 1)[1].rpartition("/")
    mounts = {str(v).split(":")[1]: (CLUSTER.parent / str(v).split(":")[0]).resolve()
              for v in prom["volumes"]}
    host_config = mounts[folder] / filename
    config = yaml.safe_load(host_config.read_text())
    for rule_file in config["rule_files"]:
        assert (mounts[folder] / rule_file).is_file(), rule_file
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "leadflow-worker")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["leadflow-worker"] and sd["type"] == "A"
    worker_env = _env(_cluster()["services"]["leadflow-worker"])
    assert sd["port"] == int(worker_env["LEADFLOW_WEB_PORT"])
    grafana = _cluster()["services"]["grafana"]
    targets = {str(v).split(":")[1] for v in grafana["volumes"]}
    assert "/etc/grafana/provisioning" in targets
