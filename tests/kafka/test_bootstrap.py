"""Which cluster production code and CLI commands use: configured servers, else (CLI only)
the running local development broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli.bootstrap import command_bootstrap
from pipeline.errors import BrokerError, ConfigError
from pipeline.kafka.bootstrap import NoClusterConfigured, configured_bootstrap
from pipeline.settings import Settings
from pipeline.stream.worker import build


def test_configured_servers_are_used(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, bootstrap_servers="k1:9092,k2:9092")
    assert configured_bootstrap(settings) == "k1:9092,k2:9092"
    assert command_bootstrap(settings) == "k1:9092,k2:9092"


def test_production_without_servers_is_one_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(NoClusterConfigured) as err:
        configured_bootstrap(Settings(home=tmp_path, bootstrap_servers=None))
    assert isinstance(err.value, ConfigError)
    assert str(err.value).startswith(
        "no Kafka cluster configured: set LEADFLOW_BOOTSTRAP_SERVERS")


def test_worker_build_never_falls_back_to_a_local_broker(tmp_path: Path) -> None:
    with pytest.raises(NoClusterConfigured):
        build(Settings(home=tmp_path, bootstrap_servers=None))


def test_command_without_servers_looks_for_the_local_broker(tmp_path: Path) -> None:
    # Nothing runs in this LEADFLOW_HOME: the same message the commands always gave.
    with pytest.raises(BrokerError) as err:
        command_bootstrap(Settings(home=tmp_path, bootstrap_servers=None))
    assert str(err.value) == (
        "no Kafka broker: run `leadflow kafka up` or set LEADFLOW_BOOTSTRAP_SERVERS"
    )
