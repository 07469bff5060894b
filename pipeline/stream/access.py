"""Who may read the worker's lead API: the bind decision and the bearer-token check.

Pure functions (no Faust), so the decision is unit-tested without a worker.
"""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr

from pipeline.errors import ConfigError
from pipeline.settings import Settings


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or a wildcard: assume it faces the network


def check_web_exposure(settings: Settings) -> None:
    """Refuse to serve personal data on a network interface without a token."""
    if is_loopback(settings.web_host) or settings.api_token is not None:
        return
    raise ConfigError(
        f"LEADFLOW_WEB_HOST={settings.web_host} exposes the lead API (names, titles, "
        "companies) beyond this machine, and LEADFLOW_API_TOKEN is not set: set "
        "LEADFLOW_API_TOKEN to a long random secret (clients then send "
        "'Authorization: Bearer <token>'), or bind LEADFLOW_WEB_HOST=127.0.0.1")


WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def advertised_host(settings: Settings, hostname: str) -> str:
    """The address other workers forward lead lookups to: the configured one, else the bind
    address, except that a wildcard bind (reachable at every address, named by none)
    advertises `hostname` (the machine's or container's name)."""
    if settings.web_advertised_host:
        return settings.web_advertised_host
    return hostname if settings.web_host in WILDCARDS else settings.web_host


def authorized(header: str | None, token: SecretStr | None) -> bool:
    """Whether an Authorization header carries the token (any header when none is set)."""
    if token is None:
        return True
    if header is None:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time: the comparison must not tell how many leading characters matched.
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
