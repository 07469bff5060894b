"""Loopback ports for development servers: the local broker, test collectors, Prometheus."""

from __future__ import annotations

import errno
import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound (SO_REUSEADDR: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (for `--processes n`)."""
    for _ in range(100):
        first = free_port()
        if first + n - 1 <= 65535 and all(port_free(first + i) for i in range(1, n)):
            return first
    raise OSError(f"no {n} consecutive free ports found on {HOST}")
