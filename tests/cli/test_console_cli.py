"""`leadflow console` refuses a network bind without a token before it looks for Kafka."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.workers import REPO


def test_console_on_all_interfaces_without_token_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LEADFLOW_")}
    # No broker is configured: the refusal must come before any broker is looked for.
    env |= {"LEADFLOW_CONSOLE_HOST": "0.0.0.0", "LEADFLOW_HOME": "/nonexistent/leadflow"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "console"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("error: LEADFLOW_CONSOLE_HOST=0.0.0.0 would show lead pages")
    assert "LEADFLOW_CONSOLE_TOKEN" in r.stderr and "Traceback" not in r.stderr
