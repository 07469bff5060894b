"""Who may read the lead API: where the worker binds, when it refuses, the token check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.stream.access import authorized, check_web_exposure, is_loopback
from pipeline.stream.app import LeadflowApp
from pipeline.stream.worker import build

REPO = Path(__file__).resolve().parents[2]
REFUSAL = (
    "LEADFLOW_WEB_HOST=0.0.0.0 exposes the lead API (names, titles, companies) beyond this "
    "machine, and LEADFLOW_API_TOKEN is not set: set LEADFLOW_API_TOKEN to a long random "
    "secret (clients then send 'Authorization: Bearer <token>'), or bind "
    "LEADFLOW_WEB_HOST=127.0.0.1")


def test_the_default_is_loopback_without_a_token() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.web_host == "127.0.0.1" and s.api_token is None
    check_web_exposure(s)  # no refusal: nothing leaves this machine


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_web_exposure(Settings(web_host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "worker-0.leadflow"])
def test_any_other_host_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="LEADFLOW_API_TOKEN is not set"):
        check_web_exposure(Settings(web_host=host))
    check_web_exposure(Settings(web_host=host, api_token=SecretStr("s3cret")))


def test_the_refusal_names_both_settings() -> None:
    with pytest.raises(ConfigError) as err:
        check_web_exposure(Settings(web_host="0.0.0.0"))
    assert str(err.value) == REFUSAL


def test_an_empty_token_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # What an unset compose variable turns into: it must not become "the empty token".
    monkeypatch.setenv("LEADFLOW_API_TOKEN", "")
    assert Settings().api_token is None
    monkeypatch.setenv("LEADFLOW_API_TOKEN", "  ")
    assert Settings().api_token is None
    monkeypatch.setenv("LEADFLOW_API_TOKEN", "zq9-token")
    s = Settings()
    assert s.api_token is not None and s.api_token.get_secret_value() == "zq9-token"
    assert "zq9" not in repr(s)  # SecretStr: never in logs or tracebacks


def test_authorized() -> None:
    token = SecretStr("s3cret")
    assert authorized(None, None)  # no token configured: open, as on loopback before
    assert authorized("Bearer anything", None)
    assert authorized("Bearer s3cret", token)
    assert authorized("bearer s3cret", token)  # the scheme is case-insensitive (RFC 7235)
    for header in (None, "", "Bearer", "Bearer ", "Bearer s3cre", "Bearer s3cretx",
                   "Basic s3cret", "s3cret", "Bearer S3CRET"):
        assert not authorized(header, token), header


def test_worker_build_refuses_an_exposed_api_without_a_token(tmp_path: Path) -> None:
    # Before anything else: no broker is needed to be told.
    with pytest.raises(ConfigError, match=r"LEADFLOW_WEB_HOST=0\.0\.0\.0"):
        build(Settings(home=tmp_path, web_host="0.0.0.0", bootstrap_servers=None))


def test_faust_binds_the_configured_host(tmp_path: Path) -> None:
    # Faust's own default web_bind is 0.0.0.0, whatever web_host says.
    from prometheus_client import CollectorRegistry

    from pipeline.core.rules import load_default_rules
    from pipeline.metrics.registry import Metrics

    rules = load_default_rules()
    lf = LeadflowApp(Settings(home=tmp_path), rules, bootstrap="127.0.0.1:1",
                     metrics=Metrics(CollectorRegistry(), sources=["web"], teams=rules.teams(),
                                     rejection_reasons=rules.rejection_reasons,
                                     rules_version=rules.version, version="test"))
    assert lf.app.conf.web_bind == "127.0.0.1"
    assert lf.app.conf.web_host == "127.0.0.1"


def test_leadflow_worker_refuses_before_looking_for_a_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(LEADFLOW_WEB_HOST="0.0.0.0", LEADFLOW_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "worker"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"error: {REFUSAL}"


def test_the_advertised_address_names_this_worker_even_on_a_wildcard_bind() -> None:
    from pipeline.stream.access import advertised_host

    assert advertised_host(Settings(), "box-1") == "127.0.0.1"  # loopback: as bound
    assert advertised_host(Settings(web_host="10.0.0.5", api_token="t"), "box-1") == "10.0.0.5"
    # 0.0.0.0 names no address another worker can reach: the machine's name instead
    assert advertised_host(Settings(web_host="0.0.0.0", api_token="t"), "box-1") == "box-1"
    # k8s sets the pod IP (deploy/k8s/worker-statefulset.yaml)
    assert advertised_host(Settings(web_host="0.0.0.0", api_token="t",
                                    web_advertised_host="10.1.2.3"), "box-1") == "10.1.2.3"


def test_web_port_0_is_a_free_port_chosen_before_faust_starts(tmp_path: Path) -> None:
    # Faust refuses port 0, and must advertise the real port to route lead requests.
    import socket

    lf = build(Settings(home=tmp_path, web_port=0), bootstrap="127.0.0.1:1")
    port = lf.app.conf.web_port
    assert port == lf.settings.web_port and 1024 <= port <= 65535
    assert lf.app.conf.canonical_url.port == port
    with socket.socket() as s:  # nothing holds it: the worker's web server can bind it
        s.bind(("127.0.0.1", port))
