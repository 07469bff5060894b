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
