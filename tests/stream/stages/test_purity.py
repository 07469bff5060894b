"""The stages load no Faust, no Kafka client shell, no clock: a fresh interpreter imports
them and the modules it loaded are checked (this test session itself loads Faust)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import json, sys
import pipeline.stream.stages.ingest, pipeline.stream.stages.stitch
import pipeline.stream.stages.score, pipeline.stream.stages.assign
print(json.dumps(sorted(sys.modules)))
"""

# The worker's shell: Faust and its helpers, the store, the web server, the clock and the
# modules of leadflow's own shell. (aiokafka is loaded for its murmur2 partition hash.)
SHELL = ("faust", "mode", "rocksdict", "aiohttp")
OURS = ("pipeline.stream.app", "pipeline.stream.faust_adapter", "pipeline.stream.tables",
        "pipeline.stream.transactions", "pipeline.stream.web", "pipeline.stream.inputs",
        "pipeline.stream.offsets", "pipeline.stream.clock", "pipeline.stream.worker")


def test_the_stage_modules_import_nothing_of_the_shell() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "pipeline.stream.stages.score" in loaded
    assert [m for m in loaded if m.split(".")[0] in SHELL or m in OURS] == []
