"""Moved to tests/support/workers.py; re-exported only for tests/collector/test_browser_scored.py,
whose owner switches its import (then this file goes)."""

from tests.support.workers import Isolated, WorkerProcess

__all__ = ["Isolated", "WorkerProcess"]
