"""`leadflow worker --processes N`: several workers of one app on one machine.

One Python process uses about one core, so a machine with more cores runs more workers of
the same consumer group; Kafka spreads the partitions over them as over workers on separate
machines. Each process gets its own state folder (RocksDB locks a partition's store to one
process) and web port (the base port + its index). The parent only supervises: it forwards
SIGINT, SIGTERM and SIGHUP, and when one process dies on its own it stops the others and
exits with that code, so systemd or Kubernetes sees the failure instead of a worker running
at part strength.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pipeline.errors import ConfigError
from pipeline.settings import Settings

__all__ = ["Child", "child_command", "child_env", "plan", "supervise"]

#: How long stopped processes get to commit and close before they are killed.
GRACE_S = 60.0
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Child:
    """One worker process of a `--processes` run."""

    index: int
    web_port: int  # 0: the system picks one
    state_dir: Path


def plan(settings: Settings, processes: int) -> list[Child]:
    """The processes to start: web ports from ``settings.web_port`` up, one state folder each."""
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, not {processes}")
    base = settings.web_port
    if base and base + processes - 1 > 65535:
        raise ConfigError(f"web ports {base}..{base + processes - 1} do not fit below 65536: "
                          "choose a lower --web-port")
    return [Child(i, base + i if base else 0, settings.worker_state_dir / f"process-{i}")
            for i in range(processes)]


def child_env(child: Child, *, bootstrap: str,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one process: the parent's, with its broker, port and state folder."""
    env = dict(os.environ if base is None else base)
    env.update({
        # Resolved once by the parent: a child must not start a second local broker.
        "LEADFLOW_BOOTSTRAP_SERVERS": bootstrap,
        "LEADFLOW_WEB_PORT": str(child.web_port),
        "LEADFLOW_STATE_DIR": str(child.state_dir),
    })
    return env


def child_command(loglevel: str) -> list[str]:
    """The command line of one worker process (a plain single-process worker)."""
    return [sys.executable, "-m", "pipeline.cli.main", "worker", "--loglevel", loglevel]


def _die_with_parent() -> None:
    # Runs in the child before exec: a SIGKILLed parent must not leave workers behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(commands: Sequence[tuple[list[str], Mapping[str, str]]], *,
              say: Callable[[str], None], grace_s: float = GRACE_S) -> int:
    """Run the commands as child processes until a signal or a child's exit; the exit code.

    0 when a signal stopped everything cleanly; else the first non-zero code seen (a child
    that exits on its own, even with 0, is a failure of the whole: 1 then).
    """
    procs: list[subprocess.Popen[bytes]] = []
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        for cmd, env in commands:
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which then
            # stops each child exactly once.
            procs.append(subprocess.Popen(cmd, env=dict(env), start_new_session=True,
                                          preexec_fn=_die_with_parent))
        say(f"started {len(procs)} worker processes: pids "
            f"{', '.join(str(p.pid) for p in procs)}")
        code = 0
        while not stop_requested:
            exited = [(i, p) for i, p in enumerate(procs) if p.poll() is not None]
            if exited:
                i, p = exited[0]
                code = p.returncode or 1
                say(f"worker process {i} (pid {p.pid}) exited with code {p.returncode}; "
                    "stopping the others")
                break
            time.sleep(_POLL_S)
        else:
            say(f"{signal.Signals(stop_requested[0]).name}: stopping {len(procs)} "
                "worker processes")
        return _stop_all(procs, grace_s, say) or code
    finally:
        _stop_all(procs, 0.0, say)
        for s, h in previous.items():
            signal.signal(s, h)


def _stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float,
              say: Callable[[str], None]) -> int:
    """SIGTERM each running process, SIGKILL what is left after ``grace_s``; first bad code."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    code = 0
    for i, p in enumerate(procs):
        if p.poll() is None:
            say(f"worker process {i} (pid {p.pid}) did not stop within {grace_s:.0f} s: killed")
            p.kill()
            p.wait()
            code = code or 1
        elif p.returncode not in (0, -signal.SIGTERM):
            code = code or p.returncode
    return code
