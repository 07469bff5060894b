"""The `--processes` supervisor: its plan, and what it does when a child or a signal ends it."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.stream.processes import Child, child_env, plan, supervise


def test_plan_gives_each_process_the_next_port_and_its_own_state_folder(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, app_id="acme", web_port=7000)
    assert plan(s, 3) == [
        Child(0, 7000, tmp_path / "worker" / "acme" / "process-0"),
        Child(1, 7001, tmp_path / "worker" / "acme" / "process-1"),
        Child(2, 7002, tmp_path / "worker" / "acme" / "process-2"),
    ]
    # Port 0 asks the system for any free port, for each process.
    assert [c.web_port for c in plan(Settings(home=tmp_path, web_port=0), 2)] == [0, 0]
    moved = Settings(home=tmp_path, state_dir=tmp_path / "elsewhere")
    assert plan(moved, 1)[0].state_dir == tmp_path / "elsewhere" / "process-0"


def test_plan_refuses_nonsense_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        plan(Settings(home=tmp_path), 0)
    with pytest.raises(ConfigError, match=r"ports 65534\.\.65536 do not fit"):
        plan(Settings(home=tmp_path, web_port=65534), 3)


def test_child_env_pins_the_broker_port_and_state(tmp_path: Path) -> None:
    env = child_env(Child(1, 7001, tmp_path / "p1"), bootstrap="127.0.0.1:9092",
                    base={"LEADFLOW_APP_ID": "acme", "LEADFLOW_WEB_PORT": "7000"})
    assert env == {"LEADFLOW_APP_ID": "acme", "LEADFLOW_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                   "LEADFLOW_WEB_PORT": "7001", "LEADFLOW_STATE_DIR": str(tmp_path / "p1")}


# A stand-in worker: records that it started and how it was stopped, then waits.
CHILD = """
import pathlib, signal, sys, time
d = pathlib.Path(sys.argv[1]); name = sys.argv[2]
def stop(signum, frame):
    (d / f"{name}.stopped").write_text(signal.Signals(signum).name); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(d / f"{name}.started").write_text("")
if len(sys.argv) > 3:
    sys.exit(int(sys.argv[3]))
while True:
    time.sleep(1)
"""


def _wait_for(paths: list[Path], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, [p for p in paths if not p.exists()]
        time.sleep(0.05)


def test_a_child_that_dies_stops_the_others_and_gives_its_code(tmp_path: Path) -> None:
    said: list[str] = []
    cmds = [([sys.executable, "-c", CHILD, str(tmp_path), "a"], dict(os.environ)),
            ([sys.executable, "-c", CHILD, str(tmp_path), "b", "3"], dict(os.environ))]
    assert supervise(cmds, say=said.append, grace_s=20) == 3
    assert (tmp_path / "a.stopped").read_text() == "SIGTERM"
    assert any("worker process 1" in s and "exited with code 3" in s for s in said), said


def test_a_signal_to_the_parent_stops_every_child_once_and_exits_zero(tmp_path: Path) -> None:
    said: list[str] = []
    cmds = [([sys.executable, "-c", CHILD, str(tmp_path), n], dict(os.environ))
            for n in ("a", "b")]

    def hang_up_when_started() -> None:
        _wait_for([tmp_path / "a.started", tmp_path / "b.started"])
        os.kill(os.getpid(), signal.SIGHUP)

    before = signal.getsignal(signal.SIGHUP)
    t = threading.Thread(target=hang_up_when_started)
    t.start()
    try:
        assert supervise(cmds, say=said.append, grace_s=20) == 0
    finally:
        t.join()
    assert (tmp_path / "a.stopped").read_text() == "SIGTERM"
    assert (tmp_path / "b.stopped").read_text() == "SIGTERM"
    assert any(s.startswith("SIGHUP: stopping 2") for s in said), said
    # The handlers the supervisor installed are gone again.
    assert signal.getsignal(signal.SIGHUP) is before
