"""The local development broker of a ``Settings`` (``leadflow kafka``, demo, bench, tests).

Its data lives in ``settings.kafka_dir``; the JSON state file there is how other processes
(``leadflow worker`` through the CLI's fallback, ``leadflow kafka down``) find it.
"""

from __future__ import annotations

import contextlib

from pipeline.devkafka.broker import (
    BrokerAlreadyRunning,
    BrokerState,
    LocalBroker,
    read_state,
    require_java,
)
from pipeline.devkafka.jars import Progress, _check_version, _stderr, jars_dir_for, resolve_jars
from pipeline.devkafka.ports import HOST, port_free
from pipeline.errors import BrokerError
from pipeline.settings import Settings

#: The port ``leadflow kafka up`` prefers when none is asked for (Kafka's usual port).
PREFERRED_PORT = 9092


def local_broker(settings: Settings, port: int = 0) -> LocalBroker:
    """The local development broker of ``settings`` (data in ``settings.kafka_dir``)."""
    return LocalBroker(
        settings.kafka_dir, jars_dir_for(settings), settings.kafka_version,
        settings.kafka_heap_mb, port=port,
    )


def local_status(settings: Settings) -> BrokerState | None:
    """The running local broker of ``settings``, or None."""
    return read_state(settings.kafka_dir)


def start_local_broker(
    settings: Settings, port: int | None = None, progress: Progress | None = _stderr
) -> BrokerState:
    """Resolve the jars if needed and start the local broker.

    ``port=None`` prefers 9092 and takes a free port if 9092 is busy; an explicit port must be
    free. Raises BrokerAlreadyRunning (a BrokerError) if it runs already.
    """
    running = local_status(settings)
    if running is not None:
        raise BrokerAlreadyRunning(running)
    _check_version(settings.kafka_version)
    require_java()  # say so before a long jar download
    if port is None:
        port = PREFERRED_PORT if port_free(PREFERRED_PORT) else 0
    elif port and not port_free(port):
        raise BrokerError(f"Kafka port {port} on {HOST} is already in use by another process")
    resolve_jars(jars_dir_for(settings), settings.kafka_version, progress)
    broker = local_broker(settings, port=port)
    if progress:
        progress(f"starting Kafka {settings.kafka_version} (KRaft, log {broker.log_file})…")
    return broker.start(progress=progress)


def stop_local_broker(settings: Settings) -> bool:
    """Stop the local broker of ``settings``; returns whether one was running."""
    return local_broker(settings).stop()


def resolve_bootstrap(settings: Settings) -> str:
    """The configured bootstrap servers, else the running local broker's (never starts one)."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    state = local_status(settings)
    if state is not None:
        return state.bootstrap
    raise BrokerError(
        "no Kafka broker: run `leadflow kafka up` or set LEADFLOW_BOOTSTRAP_SERVERS"
    )


def ensure_local_broker(settings: Settings, progress: Progress | None = _stderr) -> str:
    """The bootstrap servers to use, starting the local broker if none is configured/running."""
    with contextlib.suppress(BrokerError):
        return resolve_bootstrap(settings)
    try:
        return start_local_broker(settings, progress=progress).bootstrap
    except BrokerAlreadyRunning as exc:  # another process started it meanwhile
        return exc.state.bootstrap
