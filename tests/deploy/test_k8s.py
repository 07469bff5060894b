"""deploy/k8s/: every manifest valid against the Kubernetes JSON schemas, and wired right.

The schemas are the ones bundled in the `kubernetes-validate` package (strict: unknown fields
are errors); the test blocks sockets so that it proves validation needs no network.
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.settings import Settings, Topics
from pipeline.stream.access import check_web_exposure

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                yield name, doc


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def validate(doc: dict[str, Any]) -> str:
    return str(kubernetes_validate.validate(doc, K8S_VERSION, strict=True))


def test_kustomization_lists_every_manifest_file() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_every_manifest_is_valid_against_the_schemas() -> None:
    kinds = []
    for name, doc in manifests():
        try:
            assert validate(doc) == "1.30"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(["Namespace", "ConfigMap", "Secret", "Job", "Service",
                                    "StatefulSet", "PodDisruptionBudget", "Deployment",
                                    "Service"])


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "missing selector"])
def test_a_broken_manifest_is_rejected(breakage: str) -> None:
    """The validation can fail: the same StatefulSet, broken three ways."""
    sts = copy.deepcopy(one("StatefulSet", "leadflow-worker"))
    container = sts["spec"]["template"]["spec"]["containers"][0]
    if breakage == "unknown field":
        container["readinesProbe"] = container.pop("readinessProbe")  # a typo
    elif breakage == "wrong type":
        sts["spec"]["replicas"] = "three"
    else:
        del sts["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sts)


def worker_container() -> dict[str, Any]:
    sts = one("StatefulSet", "leadflow-worker")
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


def test_worker_probes_hit_readyz_and_healthz_on_the_settings_web_port() -> None:
    c = worker_container()
    default_port = Settings.model_fields["web_port"].default
    assert default_port == 6066
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    assert port_number(c, ready["port"]) == default_port
    assert port_number(c, live["port"]) == default_port
    config = one("ConfigMap", "leadflow-config")["data"]
    assert int(config["LEADFLOW_WEB_PORT"]) == default_port
    assert config["LEADFLOW_WEB_HOST"] == "0.0.0.0"  # probes come from outside the pod
    svc = one("Service", "leadflow-worker")
    assert svc["spec"]["clusterIP"] == "None"  # headless
    assert svc["spec"]["selector"] == one(
        "StatefulSet", "leadflow-worker")["spec"]["selector"]["matchLabels"]


def test_worker_state_volume_is_the_settings_home() -> None:
    sts = one("StatefulSet", "leadflow-worker")
    assert sts["spec"]["serviceName"] == "leadflow-worker"
    claims = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in worker_container()["volumeMounts"]}
    config = one("ConfigMap", "leadflow-config")["data"]
    home = config["LEADFLOW_HOME"]
    assert mounts["state"] == home
    assert "storage" in claims["state"]["spec"]["resources"]["requests"]
    # The worker's RocksDB lives under home unless LEADFLOW_STATE_DIR moves it elsewhere.
    assert "LEADFLOW_STATE_DIR" not in config
    settings = Settings(home=Path(home), app_id=config["LEADFLOW_APP_ID"])
    assert Path(home) in settings.worker_state_dir.parents


def test_config_names_are_real_settings_and_secrets_are_not_in_the_configmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = one("ConfigMap", "leadflow-config")["data"]
    secret = one("Secret", "leadflow-secrets")["stringData"]
    fields = {f"LEADFLOW_{n.upper()}" for n in Settings.model_fields}
    topic_fields = {f"LEADFLOW_TOPIC_{n.upper()}" for n in Topics.model_fields}
    unknown = set(config) - fields - topic_fields
    assert not unknown, unknown
    assert "LEADFLOW_WRITE_KEYS" not in config
    assert {"LEADFLOW_WRITE_KEYS", "LEADFLOW_SASL_USERNAME", "LEADFLOW_SASL_PASSWORD",
            "LEADFLOW_API_TOKEN"} <= set(secret)
    assert "LEADFLOW_API_TOKEN" not in config
    assert int(config["LEADFLOW_STANDBY_REPLICAS"]) >= 1
    # The values parse as settings from the environment (types, bounds, JSON write keys).
    for k, v in {**config, **secret}.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.topics.stage_changes == config["LEADFLOW_TOPIC_STAGE_CHANGES"]
    assert s.standby_replicas == int(config["LEADFLOW_STANDBY_REPLICAS"])
    assert set(s.write_keys.values()) <= {"web", "email", "product", "crm"}
    assert len(s.bootstrap_servers.split(",")) == 3  # type: ignore[union-attr]
    # The workers bind all interfaces, so they start only with the Secret's API token.
    assert s.web_host == "0.0.0.0" and s.api_token is not None
    check_web_exposure(s)


def test_every_workload_takes_config_and_secrets_from_env_from() -> None:
    pods = [d["spec"]["template"]["spec"] for d in
            by_kind("StatefulSet") + by_kind("Deployment") + by_kind("Job")]
    assert len(pods) == 3
    for pod in pods:
        for c in pod["containers"]:
            refs = {(k, v["name"]) for e in c["envFrom"] for k, v in e.items()}
            assert refs == {("configMapRef", "leadflow-config"),
                            ("secretRef", "leadflow-secrets")}
            assert c["image"] == "leadflow"
            assert "memory" in c["resources"]["limits"]


def test_worker_memory_request_covers_the_figure_the_manifest_was_sized_from() -> None:
    res = worker_container()["resources"]

    def mib(q: str) -> float:
        assert q.endswith("Mi"), q
        return float(q[:-2])

    # The manifest's own comment names the measured RSS it was sized from; the request must
    # cover it and the limit the request. (README is not read: two documents agreeing with
    # each other proves nothing about the manifest.)
    text = (K8S / "worker-statefulset.yaml").read_text()
    found = re.search(r"RSS of (\d[\d,]*) MB", text)
    assert found, "the worker manifest no longer says which RSS it was sized from"
    rss_mb = int(found.group(1).replace(",", ""))
    assert mib(res["requests"]["memory"]) * 1.048576 > rss_mb
    assert mib(res["limits"]["memory"]) >= mib(res["requests"]["memory"])


def test_pdb_and_topics_job() -> None:
    pdb = one("PodDisruptionBudget", "leadflow-worker")
    sts = one("StatefulSet", "leadflow-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    job = one("Job", "leadflow-topics")["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["topics", "create"]
    assert job["restartPolicy"] in {"OnFailure", "Never"}
    collector = one("Deployment", "leadflow-collector")["spec"]["template"]["spec"]
    c = collector["containers"][0]
    assert c["args"][0] == "collector"
    assert port_number(c, c["readinessProbe"]["httpGet"]["port"]) == Settings.model_fields[
        "collector_port"].default
    svc = one("Service", "leadflow-collector")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
