"""The local broker's runtime jars: resolved once from Maven Central into a shared cache.

``mvn`` resolves them with the pom next to this file; a marker file lists a complete folder,
so a half-done download never looks usable and every broker and test cluster shares one cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.errors import BrokerError, ConfigError
from pipeline.settings import Settings

JARS_ENV = "LEADFLOW_KAFKA_JARS"
COMPLETE_MARKER = ".leadflow-complete"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
POM = Path(__file__).resolve().parent / "pom.xml"

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tail_text(text: str, n: int) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:]) if lines else "(no output)"



def jars_dir_for(settings: Settings) -> Path:
    """The jar cache folder: $LEADFLOW_KAFKA_JARS, else ``<home>/kafka/lib-<version>``."""
    override = os.environ.get(JARS_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return (settings.kafka_dir / f"lib-{settings.kafka_version}").resolve()


def _check_version(version: str) -> None:
    # The pom pins the reload4j logging backend, which only Kafka 3.x uses (4.x moved to log4j2).
    if not version.startswith("3."):
        raise ConfigError(
            f"Kafka {version} is not supported by the local broker (use a 3.x version, e.g. 3.9.1)"
        )


def _lib_complete(lib: Path, version: str) -> bool:
    marker = lib / COMPLETE_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    jars = info.get("jars", [])
    return (
        info.get("version") == version
        and bool(jars)
        and all((lib / name).is_file() for name in jars)
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never resolve or start the same thing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_jars(lib: Path, version: str, progress: Progress | None = _stderr) -> Path:
    """Make sure ``lib`` holds Kafka ``version``'s runtime jars (Maven Central, first run only)."""
    _check_version(version)
    lib = lib.resolve()
    if _lib_complete(lib, version):
        return lib
    with _file_lock(lib.parent / f".{lib.name}.lock"):
        if _lib_complete(lib, version):  # another process finished while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven (mvn) not found: install Maven 3 (e.g. `apt-get install maven`) so the "
                f"Kafka jars can be downloaded, or set {JARS_ENV} to a folder that has them"
            )
        if progress:
            progress(f"resolving Kafka {version} jars from Maven Central (first run only)…")
        started = time.monotonic()
        # Resolve into a scratch folder and move it into place, so a half-done download
        # (Ctrl-C, network error) never looks like a usable lib folder.
        work = lib.parent / f".{lib.name}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "lib").mkdir(parents=True)
        shutil.copyfile(POM, work / "pom.xml")
        cmd = [
            mvn, "-B", "-q", f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={work / 'lib'}",
            f"-Dkafka.version={version}",
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=work, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(work, ignore_errors=True)
            raise BrokerError("resolving the Kafka jars with Maven took over 15 minutes") from None
        if proc.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            tail = _tail_text(proc.stdout + proc.stderr, 15)
            raise BrokerError(
                f"Maven could not resolve Kafka {version} jars (exit {proc.returncode}):\n{tail}"
            )
        jars = sorted(p.name for p in (work / "lib").glob("*.jar"))
        if not any(name.startswith(f"kafka_2.13-{version}") for name in jars):
            shutil.rmtree(work, ignore_errors=True)
            raise BrokerError(f"Maven finished but kafka_2.13-{version}.jar is missing")
        (work / "lib" / COMPLETE_MARKER).write_text(
            json.dumps({"version": version, "jars": jars}, indent=1)
        )
        shutil.rmtree(lib, ignore_errors=True)
        os.replace(work / "lib", lib)
        shutil.rmtree(work, ignore_errors=True)
        if progress:
            progress(f"{len(jars)} jars in {lib} ({time.monotonic() - started:.1f} s)")
    return lib
