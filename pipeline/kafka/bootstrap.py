"""The Kafka cluster production code talks to: the configured bootstrap servers, nothing else.

Never starts or looks for a local broker: that development convenience lives in
``pipeline.devkafka`` and is reached only through the CLI (``pipeline.cli.bootstrap``).
"""

from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.settings import Settings


class NoClusterConfigured(ConfigError):
    """No bootstrap servers are configured and the caller may not fall back to a local broker."""

    def __init__(self) -> None:
        super().__init__(
            "no Kafka cluster configured: set LEADFLOW_BOOTSTRAP_SERVERS to its brokers "
            "(host:port, comma separated); for development, `leadflow kafka up` starts a "
            "local broker that the leadflow commands find by themselves"
        )


def configured_bootstrap(settings: Settings) -> str:
    """``settings.bootstrap_servers``; NoClusterConfigured if it is not set."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    raise NoClusterConfigured()
