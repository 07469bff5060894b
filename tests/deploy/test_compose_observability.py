"""deploy/compose/observability.yml: services, mounts and the broker address (no Docker here).

Compose resolves relative paths of every -f file against the first file's folder; the file
is used after docker-compose.kafka.yml, so mounts resolve from the repository root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OBS = REPO / "deploy" / "compose" / "observability.yml"
KAFKA = REPO / "docker-compose.kafka.yml"


def services() -> dict[str, Any]:
    doc = yaml.safe_load(OBS.read_text())
    svcs: dict[str, Any] = doc["services"]
    return svcs


def bind_mounts(svc: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path in the repo, container path) of the service's bind mounts."""
    out = []
    for vol in svc.get("volumes", []):
        host, container, *_ = str(vol).split(":")
        if host.startswith((".", "/")):
            out.append(((REPO / host).resolve(), container))
    return out


def test_services_present() -> None:
    svcs = services()
    assert {"prometheus", "grafana", "leadflow-worker"} <= set(svcs)
    assert svcs["prometheus"]["image"].startswith("prom/prometheus:")
    assert svcs["grafana"]["image"].startswith("grafana/grafana:")
    assert svcs["leadflow-worker"]["image"] == "python:3.11-slim"


def test_every_bind_mount_exists_in_the_repo() -> None:
    seen = 0
    for name, svc in services().items():
        for host, container in bind_mounts(svc):
            assert host.exists(), f"{name}: {host} (mounted at {container}) does not exist"
            assert host == REPO or REPO in host.parents, f"{name}: {host} is outside the repo"
            seen += 1
    assert seen >= 4


def test_prometheus_config_and_rules_are_mounted() -> None:
    prom = services()["prometheus"]
    mounts = {c: h for h, c in bind_mounts(prom)}
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_in_container = config_arg.split("=", 1)[1]
    folder, _, filename = config_in_container.rpartition("/")
    assert folder in mounts
    host_config = mounts[folder] / filename
    assert host_config.is_file()
    # Rule files are resolved next to the config: they must be in the same mount.
    for rule_file in yaml.safe_load(host_config.read_text())["rule_files"]:
        assert (mounts[folder] / rule_file).is_file(), rule_file


def test_prometheus_scrapes_the_worker_service_port() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "leadflow-worker")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "leadflow-worker:6066" in targets
    worker = services()["leadflow-worker"]
    assert worker["environment"]["LEADFLOW_WEB_HOST"] == "0.0.0.0"
    # All interfaces: the worker starts only with a token, taken from the shell (required).
    assert worker["environment"]["LEADFLOW_API_TOKEN"].startswith("${LEADFLOW_API_TOKEN:?")
    assert str(worker["environment"]["LEADFLOW_WEB_PORT"]) == "6066"


def test_grafana_provisioning_and_dashboard_mounted() -> None:
    mounts = {c: h for h, c in bind_mounts(services()["grafana"])}
    assert mounts["/etc/grafana/provisioning"] == REPO / "deploy" / "grafana" / "provisioning"
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/leadflow.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    dashboards = [c for c in mounts if c.startswith(path + "/") and c.endswith(".json")]
    assert dashboards, f"no dashboard mounted under the provider's path {path}"
    datasources = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def test_worker_uses_the_brokers_in_network_listener() -> None:
    """The worker's bootstrap must be a listener docker-compose.kafka.yml advertises under the
    service's own name (the host listener advertises 127.0.0.1, wrong inside a container)."""
    kafka = yaml.safe_load(KAFKA.read_text())["services"]["kafka"]
    advertised = {a.split("://", 1)[1]
                  for a in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    worker = services()["leadflow-worker"]
    bootstrap = worker["environment"]["LEADFLOW_BOOTSTRAP_SERVERS"]
    assert bootstrap.split(":")[0] == "kafka"
    assert bootstrap in advertised, f"{bootstrap} not in {advertised}"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = "\n".join(worker["command"])
    assert "pip install" in script
    assert "leadflow worker" in script
    assert any(c == "/src" for _, c in bind_mounts(worker))
