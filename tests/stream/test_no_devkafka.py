"""The production worker never loads the development broker code (pipeline.devkafka).

Each probe runs in a fresh interpreter: this test session itself imports pipeline.devkafka
(conftest's broker fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

REPORT_DEVKAFKA = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules
                        if m == "pipeline.devkafka" or m.startswith("pipeline.devkafka."))))
"""


def _devkafka_modules_after(code: str, **env: str) -> list[str]:
    """The pipeline.devkafka modules a fresh interpreter has loaded after running ``code``."""
    proc = subprocess.run(
        [sys.executable, "-c", code + REPORT_DEVKAFKA], cwd=REPO, capture_output=True,
        text=True, timeout=120, check=False, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_worker_and_app_import_no_devkafka_module() -> None:
    assert _devkafka_modules_after("import pipeline.stream.worker, pipeline.stream.app") == []


def test_cli_with_a_configured_cluster_loads_no_devkafka_module() -> None:
    # The README: with LEADFLOW_BOOTSTRAP_SERVERS set, commands use it, no local broker.
    code = (
        "import pipeline.cli.main\n"
        "from pipeline.cli.bootstrap import command_bootstrap\n"
        "from pipeline.settings import Settings\n"
        "assert command_bootstrap(Settings()) == 'k1:9092'\n"
    )
    assert _devkafka_modules_after(code, LEADFLOW_BOOTSTRAP_SERVERS="k1:9092") == []
