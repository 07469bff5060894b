"""A failing timer body is logged and the next tick runs: it must not stop the worker."""

from __future__ import annotations

import logging

import pytest

from pipeline.stream.app import _guarded


async def test_a_failing_timer_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def metrics_tick() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise AssertionError("Partition is not assigned")  # what aiokafka raised

    tick = _guarded(metrics_tick)
    with caplog.at_level(logging.ERROR):
        await tick()  # must not raise
        await tick()
    assert calls == [0, 1]
    assert tick.__name__ == "metrics_tick"
    assert "timer metrics_tick failed" in caplog.text
    assert "Partition is not assigned" in caplog.text
