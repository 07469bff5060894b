"""The cluster a CLI command talks to: the configured one, else the running local broker.

The README promises that with LEADFLOW_BOOTSTRAP_SERVERS set every command uses that cluster;
only without it is ``pipeline.devkafka`` imported, to find the development broker.
"""

from __future__ import annotations

from pipeline.kafka.bootstrap import configured_bootstrap
from pipeline.settings import Settings


def command_bootstrap(settings: Settings) -> str:
    """Configured bootstrap servers, else the local broker's (BrokerError if none runs)."""
    if settings.bootstrap_servers:
        return configured_bootstrap(settings)
    # Lazily: a configured production run never loads the development broker code.
    from pipeline.devkafka.local import resolve_bootstrap

    return resolve_bootstrap(settings)
