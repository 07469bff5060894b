"""Workers follow the rules topic: published rules are taken without a restart.

The feed reads the rules topic (`leadflow rules publish`) from its beginning with a plain
consumer of its own (no group: every worker reads every record), decodes and compiles
each record with the checks of `leadflow rules check`, and keeps the latest good rules.
The app asks for `current()` at the start of each batch and scores the whole batch with
them, so a switch happens between batches: a batch of the score step spans every
partition the worker holds, and all of them move to the new version together.

A record that fails to load is ignored and the rules in use stay: an error log line
naming the record and every problem, `leadflow_rules_load_failures_total{reason}`, and
the failure in `/readyz` (`rules.last_failure`). So is a record whose revision is below
the one running (`behind`): a worker never goes back to older rules.

Fit follows new rules on each lead's next event (`pipeline.core.engine.refit`), not in a
sweep over the table; its docstring says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from pipeline.core.rules import CompiledRules
from pipeline.metrics.registry import Metrics
from pipeline.published_rules import Broken, Published, decode, where

log = logging.getLogger(__name__)

#: How long the first batch waits for the rules topic to be read to its end.
CATCH_UP_S = 30.0
#: Wait before reading the rules topic again after an error (broker away, ...).
RETRY_S = 5.0
#: Problems of one ignored record kept for /readyz.
MAX_PROBLEMS = 20


class RulesFeed:
    """The rules a worker decides with, and what became of the published ones."""

    def __init__(self, rules: CompiledRules, *, origin: str, topic: str,
                 metrics: Metrics | None = None) -> None:
        self._rules = rules
        self._origin = origin
        self.topic = topic
        self._metrics = metrics
        self._next = 0  # the next offset of the rules topic to read
        self._failures = 0
        self._last_failure: dict[str, Any] | None = None
        self._caught_up = asyncio.Event()

    def current(self) -> CompiledRules:
        """The latest good rules: what the next batch is scored with."""
        return self._rules

    def offer(self, record: Published | Broken) -> bool:
        """Take a record of the rules topic into account; True when the rules changed."""
        at = where(self.topic, record.offset)
        cur = self._rules
        if isinstance(record, Broken):
            self._ignore("invalid", at, None, list(record.problems))
            return False
        if record.rules.version == cur.version:
            return False
        if record.revision < cur.model.revision:
            if not self._caught_up.is_set():
                # History read at start behind the rules this worker runs (a newer local
                # file): not a failure to alert on, only what came before.
                log.info("rules topic %s: revision %d below the running revision %d, "
                         "skipped", at, record.revision, cur.model.revision)
                return False
            self._ignore("behind", at, record.revision, [
                f"revision {record.revision} (rules version {record.rules.version}) is below "
                f"revision {cur.model.revision} (rules version {cur.version}), which this "
                "worker runs"])
            return False
        log.warning("rules version %s (revision %d, %s) from the next batch on; was %s "
                    "(revision %d, %s)", record.rules.version, record.revision, at,
                    cur.version, cur.model.revision, self._origin)
        self._rules, self._origin = record.rules, at
        if self._metrics is not None:
            self._metrics.set_rules(record.rules.version, record.rules.teams())
        return True

    def _ignore(self, reason: str, at: str, revision: int | None, problems: list[str]) -> None:
        self._failures += 1
        self._last_failure = {"record": at, "reason": reason, "revision": revision,
                              "problems": problems[:MAX_PROBLEMS]}
        if self._metrics is not None:
            self._metrics.rules_load_failed(reason)
        log.error("published rules at %s NOT LOADED (%s), still deciding with rules version "
                  "%s: %s", at, reason, self._rules.version, "; ".join(problems))

    def status(self) -> Mapping[str, Any]:
        """For /readyz: the rules in use, where from, and the last record ignored."""
        r = self._rules
        return {"version": r.version, "revision": r.model.revision, "origin": self._origin,
                "topic_read": self._caught_up.is_set(), "load_failures": self._failures,
                "last_failure": self._last_failure}

    def caught_up(self) -> None:
        """The topic was read to its end once: records from now on are new publishes."""
        self._caught_up.set()

    async def wait_caught_up(self, timeout_s: float = CATCH_UP_S) -> None:
        """Until the rules topic was read to its end once (at most `timeout_s`)."""
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)
        except TimeoutError:
            log.warning("rules topic %s not read within %g s; deciding with rules version "
                        "%s meanwhile", self.topic, timeout_s, self._rules.version)

    async def run(self, bootstrap: str, client_kwargs: Mapping[str, Any]) -> None:
        """Follow the rules topic for good; errors are logged and reading starts again."""
        while True:
            try:
                await self._follow(bootstrap, client_kwargs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the rules topic %s failed (%r); again in %g s",
                            self.topic, exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _follow(self, bootstrap: str, client_kwargs: Mapping[str, Any]) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(self.topic, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", **client_kwargs)
        try:
            await consumer.start()
            consumer.assign([tp])
            consumer.seek(tp, self._next)
            end = (await consumer.end_offsets([tp]))[tp]
            while True:
                if not self._caught_up.is_set() and await consumer.position(tp) >= end:
                    self.caught_up()
                for rec in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    # Compiling takes a while: off the loop, so batches go on meanwhile.
                    got = await asyncio.to_thread(decode, self.topic, rec.offset, rec.value)
                    self._next = rec.offset + 1
                    self.offer(got)
        finally:
            with contextlib.suppress(Exception):  # closing must not hide the real error
                await consumer.stop()
