"""`leadflow demo` as a user runs it: closing the terminal (SIGHUP) stops everything it
started, and a port already taken is said plainly before anything starts."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.devkafka.ports import free_port
from tests.support.workers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _pids_using(home: Path) -> list[int]:
    """Processes whose command line names `home` (the demo's broker and worker do)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(home).encode() in cmd or str(home).encode() in env:
            out.append(int(proc.name))
    return out


def _demo(home: Path, port: int, kafka_jars: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEADFLOW_BOOTSTRAP_SERVERS"}
    env.update({"LEADFLOW_HOME": str(home), "LEADFLOW_KAFKA_JARS": str(kafka_jars),
                "LEADFLOW_APP_ID": "demo-e2e"})
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "demo", "--rate", "50", "--visitors", "40",
         "--web-port", str(port)], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_sighup_stops_the_worker_and_the_broker_the_demo_started(
    tmp_path: Path, kafka_jars: Path,
) -> None:
    home = tmp_path / "home"
    demo = _demo(home, free_port(), kafka_jars)
    try:
        _hang_up_and_check(demo, home)
    finally:  # a failing run must not leave a broker or a worker behind either
        for pid in _pids_using(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _hang_up_and_check(demo: subprocess.Popen[str], home: Path) -> None:
    assert demo.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 180
    worker_pid = None
    for line in demo.stdout:  # the demo prints as it goes; wait for its first stage change
        seen.append(line)
        m = re.search(r"worker started \(pid (\d+)", line)
        if m:
            worker_pid = int(m.group(1))
        if worker_pid and "stage " in line and "→" in line:
            break
        assert time.monotonic() < deadline and demo.poll() is None, "".join(seen)
    assert worker_pid is not None, "".join(seen)
    # the demo's worker is on another port than the default: the hint says how to reach it
    port = demo.args[demo.args.index("--web-port") + 1]
    said = " ".join(" ".join(seen).split())  # whatever width the output was wrapped at
    assert f"`LEADFLOW_WEB_PORT={port} leadflow console`" in said, seen
    assert _pids_using(home), "the demo's broker and worker should be running now"
    os.killpg(demo.pid, signal.SIGHUP)  # what closing the terminal sends
    rest, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, "".join(seen) + rest
    assert "stopped. messages seen per topic" in rest
    deadline = time.monotonic() + 30
    while _pids_using(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids_using(home) == [], "".join(seen) + rest


def test_a_taken_web_port_is_named_before_anything_starts(
    tmp_path: Path, kafka_jars: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = _demo(tmp_path / "home", port, kafka_jars)
        out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 1, out
    assert f"error: port {port} (the worker's lead API) is in use" in out
    assert f"leadflow demo --web-port {port + 1}" in out
    assert "starting a local broker" not in out
