"""Reliability tests run their workers with `WORKER_ENV` (short sessions, timers out of reach)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.reliability import make_isolated
from tests.support.workers import Isolated


@pytest.fixture
async def isolated(kafka_bootstrap: str, tmp_path: Path) -> Isolated:
    """The shared `isolated` fixture, with the reliability worker environment."""
    return await make_isolated(kafka_bootstrap, tmp_path / "home")
