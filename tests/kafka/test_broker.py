"""The local broker: a real round trip, its lifecycle through the CLI, and its clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.devkafka.broker import STATE_FILE, LocalBroker, new_cluster_id, read_state
from pipeline.devkafka.jars import JARS_ENV, resolve_jars
from pipeline.devkafka.local import resolve_bootstrap
from pipeline.errors import BrokerError
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
VERSION = Settings.model_fields["kafka_version"].default


def _env(home: Path, jars: Path, **extra: str) -> dict[str, str | None]:
    """CLI environment: a private LEADFLOW_HOME, the shared jar cache, no configured broker."""
    return {"LEADFLOW_HOME": str(home), JARS_ENV: str(jars),
            "LEADFLOW_BOOTSTRAP_SERVERS": None, **extra}


def _no_java_path(tmp_path: Path) -> str:
    """A PATH with nothing on it (no java, no mvn)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return str(empty)


# --- a real broker ----------------------------------------------------------------------------


@pytest.mark.integration
async def test_produce_consume_round_trip(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic("roundtrip", partitions=1)
    big = b"x" * (2 * 1024 * 1024)  # above Kafka's 1 MB default: message.max.bytes is raised
    sent = [(b"lead-1", b'{"n":1}'), (b"lead-2", b'{"n":2}'), (None, b"no key"), (b"big", big)]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for key, value in sent:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )
    await consumer.start()
    got: list[tuple[bytes | None, bytes | None, int]] = []
    try:
        while len(got) < len(sent):
            batch = await consumer.getmany(timeout_ms=10_000)
            if not batch:
                break
            for records in batch.values():
                got.extend((r.key, r.value, r.offset) for r in records)
    finally:
        await consumer.stop()
    assert [(k, v) for k, v, _ in got] == sent
    assert [o for _, _, o in got] == [0, 1, 2, 3]


@pytest.mark.integration
def test_lifecycle_through_cli(tmp_path: Path, kafka_jars: Path) -> None:
    """up (on a free port), up again (reused), status, resolve_bootstrap, down, status."""
    home = tmp_path / "home"
    env = _env(home, kafka_jars)
    runner = CliRunner()
    settings = Settings(home=home, bootstrap_servers=None)
    try:
        out = runner.invoke(app, ["kafka", "up", "--port", "0"], env=env)
        assert out.exit_code == 0, out.output
        state = read_state(settings.kafka_dir)
        assert state is not None
        assert f"running at {state.bootstrap} (pid {state.pid}" in out.output
        assert state.version == VERSION
        assert state.bootstrap == f"127.0.0.1:{state.port}"
        assert state.port != state.controller_port

        again = runner.invoke(app, ["kafka", "up"], env=env)
        assert again.exit_code == 0, again.output
        assert again.output.strip() == (
            f"Kafka {VERSION} already running at {state.bootstrap} (pid {state.pid})"
        )

        status = runner.invoke(app, ["kafka", "status"], env=env)
        assert status.exit_code == 0, status.output
        assert f"running at {state.bootstrap} (pid {state.pid}), answering" in status.output

        # The state file is how other processes find the broker.
        assert resolve_bootstrap(settings) == state.bootstrap
        # A configured broker wins over the local one.
        other = Settings(home=home, bootstrap_servers="kafka.example:9092")
        assert resolve_bootstrap(other) == "kafka.example:9092"
    finally:
        down = runner.invoke(app, ["kafka", "down"], env=env)
    assert down.exit_code == 0, down.output
    assert down.output.strip() == "Kafka stopped"
    assert not (settings.kafka_dir / STATE_FILE).exists()
    # gone, not merely signalled: reap it if it is our zombie, then it must not exist
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"broker pid {state.pid} still exists after down"
        time.sleep(0.1)
    status = runner.invoke(app, ["kafka", "status"], env=env)
    assert status.exit_code == 1
    assert status.output.strip() == "Kafka is not running (start it with `leadflow kafka up`)"


@pytest.mark.integration
def test_requested_port_in_use_names_the_port(tmp_path: Path, kafka_jars: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = LocalBroker(tmp_path / "kafka", kafka_jars, VERSION, port=port)
        with pytest.raises(BrokerError) as err:
            broker.start()
    assert str(err.value) == f"Kafka port {port} on 127.0.0.1 is already in use by another process"
    assert not broker.state_file.exists()


# --- state file and errors (no broker needed) -------------------------------------------------


def test_stale_state_file_is_removed_silently(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, bootstrap_servers=None)
    settings.kafka_dir.mkdir(parents=True)
    # A pid that surely is gone: a child we started and reaped.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = {"pid": dead.pid, "bootstrap": "127.0.0.1:1", "port": 1, "controller_port": 2,
             "data_dir": str(settings.kafka_dir), "version": VERSION, "log": "x",
             "started_at": 0.0}
    (settings.kafka_dir / STATE_FILE).write_text(json.dumps(state))
    assert read_state(settings.kafka_dir) is None
    assert not (settings.kafka_dir / STATE_FILE).exists()


def test_state_file_of_a_foreign_process_is_not_trusted(tmp_path: Path) -> None:
    """A live pid that is not this folder's kafka.Kafka (pid reuse) counts as not running."""
    kafka_dir = tmp_path / "kafka"
    kafka_dir.mkdir()
    state = {"pid": os.getpid(), "bootstrap": "127.0.0.1:1", "port": 1, "controller_port": 2,
             "data_dir": str(kafka_dir), "version": VERSION, "log": "x", "started_at": 0.0}
    (kafka_dir / STATE_FILE).write_text(json.dumps(state))
    assert read_state(kafka_dir) is None


def test_resolve_bootstrap_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_BOOTSTRAP_SERVERS", "10.1.2.3:9092,10.1.2.4:9092")
    monkeypatch.setenv("LEADFLOW_HOME", str(tmp_path))
    assert resolve_bootstrap(Settings()) == "10.1.2.3:9092,10.1.2.4:9092"


def test_resolve_bootstrap_nothing_running(tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as err:
        resolve_bootstrap(Settings(home=tmp_path, bootstrap_servers=None))
    assert str(err.value) == (
        "no Kafka broker: run `leadflow kafka up` or set LEADFLOW_BOOTSTRAP_SERVERS"
    )


def test_missing_java_is_one_clear_error(
    tmp_path: Path, kafka_jars: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _no_java_path(tmp_path))
    with pytest.raises(BrokerError) as err:
        LocalBroker(tmp_path / "kafka", kafka_jars, VERSION).start()
    assert str(err.value).startswith("Java not found")
    assert "install OpenJDK 17" in str(err.value)


def test_cli_up_without_java(tmp_path: Path, kafka_jars: Path) -> None:
    env = _env(tmp_path / "home", kafka_jars, PATH=_no_java_path(tmp_path))
    out = CliRunner().invoke(app, ["kafka", "up"], env=env)
    assert out.exit_code == 1
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    assert lines[0].startswith("error: Java not found")
    assert "install OpenJDK 17" in lines[0]


def test_missing_maven_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _no_java_path(tmp_path))
    with pytest.raises(BrokerError) as err:
        resolve_jars(tmp_path / "lib", VERSION, progress=None)
    assert str(err.value).startswith("Maven (mvn) not found")
    assert not (tmp_path / "lib").exists()


def test_cluster_id_shape() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22  # 16 bytes in base64 without padding
        assert not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_status_when_nothing_runs_subprocess(tmp_path: Path) -> None:
    """The real console script: exit 1 and one line."""
    env = {**os.environ, "LEADFLOW_HOME": str(tmp_path / "home")}
    env.pop("LEADFLOW_BOOTSTRAP_SERVERS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "kafka", "status"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "Kafka is not running (start it with `leadflow kafka up`)"
    ]
    assert proc.stderr == ""


def test_topics_create_without_broker_is_one_line(tmp_path: Path) -> None:
    env = {"LEADFLOW_HOME": str(tmp_path / "home"), "LEADFLOW_BOOTSTRAP_SERVERS": None}
    out = CliRunner().invoke(app, ["topics", "create"], env=env)
    assert out.exit_code == 1
    assert out.output.strip() == (
        "error: no Kafka broker: run `leadflow kafka up` or set LEADFLOW_BOOTSTRAP_SERVERS"
    )
