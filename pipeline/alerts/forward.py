"""`leadflow alerts forward`: deliver a team's alerts to a webhook, at least once, in order.

Delivery policy (nothing is lost, see docs in `run_forwarder`):

* One consumer group per team (default ``leadflow-forwarder-<team>``), offsets committed by
  hand, one alert at a time per partition, and only after the alert is *done*: a 2xx from
  the webhook, or the alert parked on the dead-letter topic. A crash, SIGKILL, or an endpoint
  that is down leaves the offset where it was, so the alert is delivered again later: the
  receiver de-duplicates with the ``Idempotency-Key`` header (= alert_id).
* Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried with
  exponential backoff and full jitter, capped; ``Retry-After`` wins when the server sends it.
  By default retries are unbounded: an endpoint outage only delays alerts.
* A permanent rejection (any other non-2xx status, e.g. 400/401/404/413) is not retried: the
  alert's original bytes are parked on the dead-letter topic with reason
  ``webhook_rejected`` (and the source topic, partition, offset), then committed, so one bad
  alert cannot block the team's queue and can be replayed from the dead-letter topic. With a
  bounded ``--max-retries``, an alert that exhausts them is parked as ``webhook_unavailable``.
* Logs carry alert ids, status codes and attempt counts only: never the alert body (it holds
  the lead's e-mail address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from pipeline.alerts import decode_alert, topic_partitions
from pipeline.alerts.formats import Format, slack_message
from pipeline.deadletters import dead_letter
from pipeline.errors import ConfigError
from pipeline.kafka.security import KafkaSecurity, start_client

log = logging.getLogger("leadflow.alerts.forward")

#: Statuses worth retrying: the request may succeed later without any change on our side.
RETRY_STATUSES = frozenset({408, 425, 429})
REASON_REJECTED = "webhook_rejected"
REASON_UNAVAILABLE = "webhook_unavailable"
REASON_UNREADABLE = "not_an_alert"


@dataclass(frozen=True)
class ForwardConfig:
    """Everything the forwarder needs; the CLI builds it from options and settings."""

    bootstrap: str
    topic: str
    url: str
    group_id: str
    deadletter_topic: str
    max_retries: int | None = None  # None: retry transient failures forever
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    retry_after_cap_s: float = 300.0
    request_timeout_s: float = 10.0
    session_timeout_ms: int = 10_000
    max_alerts: int | None = None  # stop after this many alerts are done (tests, scripts)
    security: KafkaSecurity | None = None  # None: PLAINTEXT
    format: Format = "json"  # the alert as it is, or a Slack incoming-webhook message


@dataclass
class ForwardStats:
    """Counters of one forwarder run."""

    delivered: int = 0
    parked: int = 0
    attempts: int = 0
    retries: int = 0
    abandoned: int = 0  # in flight at shutdown or rebalance: not committed, will be redelivered
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Alerts whose offset was committed (delivered or parked)."""
        return self.delivered + self.parked


class Outcome(Enum):
    """How one alert ended."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    GAVE_UP = "gave_up"


class Stopped(Exception):
    """Shutdown was asked while an alert was in flight; it is not committed."""


class Revoked(Exception):
    """The alert's partition went to another forwarder during a retry; it will deliver it."""


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))].

    Jitter spreads the retries of many forwarders hitting one endpoint that just came back.
    """
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** max(0, attempt - 1)))


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None


def is_transient(status: int) -> bool:
    """Whether an HTTP status is worth retrying (408, 425, 429 and every 5xx)."""
    return status in RETRY_STATUSES or 500 <= status <= 599


def idempotency_key(record: ConsumerRecord) -> str:
    """The alert_id; for a value without one, a key stable across redeliveries of the record."""
    alert = decode_alert(record.value)
    aid = alert.get("alert_id") if alert else None
    if isinstance(aid, str) and aid:
        return aid
    return f"{record.topic}:{record.partition}:{record.offset}"


class Forwarder:
    """One forwarder process: a consumer group member that posts alerts to one URL."""

    def __init__(self, cfg: ForwardConfig, stop: asyncio.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or asyncio.Event()
        self.stats = ForwardStats()
        self._rng = random.Random()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    # --- Kafka -------------------------------------------------------------------------------

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The started consumer (only valid inside `run`)."""
        assert self._consumer is not None
        return self._consumer

    async def _idle(self, seconds: float, tp: TopicPartition) -> None:
        """Wait ``seconds`` between retries while staying a live member of the group.

        aiokafka leaves the group when the consumer does not poll for max_poll_interval, so
        a long outage must not simply sleep: poll with every assigned partition paused (so no
        records are fetched) until the wait is over or shutdown is asked.
        """
        consumer = self.consumer
        end = time.monotonic() + seconds
        while True:
            if self.stop.is_set():
                raise Stopped
            if tp not in consumer.assignment():
                raise Revoked
            left = end - time.monotonic()
            if left <= 0:
                return
            assigned = consumer.assignment()
            consumer.pause(*assigned)
            try:
                stray = await consumer.getmany(timeout_ms=max(1, min(500, int(left * 1000))))
            finally:
                consumer.resume(*consumer.assignment())
            # A rebalance during the poll can assign a partition that was not paused: put its
            # position back so those records are read in their turn, not skipped.
            for stray_tp, records in stray.items():
                if records and stray_tp in consumer.assignment():
                    consumer.seek(stray_tp, records[0].offset)

    async def _park(self, record: ConsumerRecord, reason: str, detail: str) -> None:
        """Put the alert's original bytes on the dead-letter topic (acks=all, waited for)."""
        assert self._producer is not None
        letter = dead_letter(
            reason=reason, detail=detail, source_topic=record.topic,
            partition=record.partition, offset=record.offset, timestamp_ms=record.timestamp,
            key=record.key, value=record.value or b"", received_ms=int(time.time() * 1000),
            headers=record.headers,
        )
        await self._producer.send_and_wait(
            self.cfg.deadletter_topic, letter.to_bytes(), key=record.key
        )

    # --- HTTP --------------------------------------------------------------------------------

    async def _post_once(
        self, http: aiohttp.ClientSession, body: bytes, key: str
    ) -> tuple[int | None, float | None, str]:
        """One POST: (status or None on a transport error, Retry-After seconds, what happened)."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        try:
            async with http.post(self.cfg.url, data=body, headers=headers) as resp:
                # Read the body so the connection can be reused; its content is not needed.
                await resp.read()
                return resp.status, retry_after_s(resp.headers.get("Retry-After")), str(resp.status)
        except TimeoutError:
            return None, None, "timeout"
        except aiohttp.ClientError as exc:
            return None, None, type(exc).__name__

    async def deliver(
        self, http: aiohttp.ClientSession, record: ConsumerRecord, tp: TopicPartition
    ) -> Outcome:
        """POST one alert until a 2xx or a permanent answer; raises Stopped/Revoked."""
        key = idempotency_key(record)
        body = record.value or b"null"
        if self.cfg.format == "slack":
            alert = decode_alert(record.value)
            if alert is None:
                await self._park(record, REASON_UNREADABLE,
                                 "not a routing alert (JSON object): cannot write it as a "
                                 "Slack message")
                return Outcome.REJECTED
            body = orjson.dumps(slack_message(alert))
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Stopped
            attempt += 1
            self.stats.attempts += 1
            # The POST is raced against shutdown: an abandoned request is simply retried by
            # whoever owns the partition next, since its offset is not committed.
            post = asyncio.ensure_future(self._post_once(http, body, key))
            stopping = asyncio.ensure_future(self.stop.wait())
            try:
                await asyncio.wait({post, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not post.done():
                post.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await post
                raise Stopped
            status, retry_after, what = post.result()
            self.stats.by_status[what] = self.stats.by_status.get(what, 0) + 1
            if status is not None and 200 <= status <= 299:
                log.info("alert %s delivered (HTTP %s, attempt %d)", key, status, attempt)
                return Outcome.DELIVERED
            if status is not None and not is_transient(status):
                log.warning("alert %s rejected (HTTP %s, attempt %d): parking it",
                            key, status, attempt)
                await self._park(record, REASON_REJECTED, f"the webhook answered HTTP {status}")
                return Outcome.REJECTED
            if self.cfg.max_retries is not None and attempt > self.cfg.max_retries:
                log.warning("alert %s undeliverable after %d attempts (last: %s): parking it",
                            key, attempt, what)
                await self._park(
                    record, REASON_UNAVAILABLE,
                    f"no 2xx after {attempt} attempts; last result: {what}",
                )
                return Outcome.GAVE_UP
            delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_cap_s,
                                  self._rng)
            if retry_after is not None:
                # The server knows when it will be ready; still bounded so a bogus header
                # cannot park the queue for a day.
                delay = min(retry_after, self.cfg.retry_after_cap_s)
            self.stats.retries += 1
            log.info("alert %s attempt %d failed (%s); retrying in %.2fs",
                     key, attempt, what, delay)
            await self._idle(delay, tp)

    # --- main loop ---------------------------------------------------------------------------

    def _rewind(self, pending: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """Seek back to the first record not done, so no fetched-but-unsent alert is skipped."""
        for tp, records in pending.items():
            if records and tp in self.consumer.assignment():
                self.consumer.seek(tp, records[0].offset)

    async def run(self) -> ForwardStats:
        """Forward until ``stop`` is set (or ``max_alerts`` are done); returns the counters.

        Each alert's offset is committed right after it is done, in partition order, so a kill
        at any moment re-sends at most the one alert that was in flight per partition.
        """
        cfg = self.cfg
        # A subscription to a missing topic waits silently forever (the broker does not
        # auto-create topics): say so instead.
        _, missing = await topic_partitions(cfg.bootstrap, [cfg.topic], security=cfg.security)
        if missing:
            raise ConfigError(
                f"topic {cfg.topic} does not exist "
                "(create it with `leadflow topics create --teams ...`)"
            )
        security = cfg.security.client_kwargs() if cfg.security else {}
        self._consumer = AIOKafkaConsumer(
            cfg.topic,
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
            **security,
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap, acks="all", enable_idempotence=True, **security
        )
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
        await start_client(self._producer, cfg.bootstrap, cfg.security)
        try:
            await start_client(self.consumer, cfg.bootstrap, cfg.security)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    await self._loop(http)
            finally:
                # No commit here: anything not committed yet is not done.
                await self.consumer.stop()
        finally:
            await self._producer.stop()
        return self.stats

    async def _loop(self, http: aiohttp.ClientSession) -> None:
        consumer = self.consumer
        cfg = self.cfg
        while not self.stop.is_set():
            if cfg.max_alerts is not None and self.stats.done >= cfg.max_alerts:
                return
            batch = await consumer.getmany(timeout_ms=500)
            pending = {tp: list(records) for tp, records in batch.items() if records}
            try:
                for tp in list(pending):
                    records = pending[tp]
                    while records:
                        record = records[0]
                        if cfg.max_alerts is not None and self.stats.done >= cfg.max_alerts:
                            self._rewind(pending)
                            return
                        if tp not in consumer.assignment():
                            break  # revoked meanwhile: its new owner starts from the commit
                        try:
                            outcome = await self.deliver(http, record, tp)
                        except Stopped:
                            self.stats.abandoned += 1
                            log.info("alert %s abandoned at shutdown, not committed",
                                     idempotency_key(record))
                            return
                        except Revoked:
                            self.stats.abandoned += 1
                            log.info("alert %s left to the partition's new owner",
                                     idempotency_key(record))
                            break
                        await consumer.commit({tp: record.offset + 1})
                        records.pop(0)
                        if outcome is Outcome.DELIVERED:
                            self.stats.delivered += 1
                        else:
                            self.stats.parked += 1
                    pending.pop(tp, None)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance took the partition: the new owner resends from the last commit
                # (a duplicate, never a loss).
                log.warning("commit refused after a rebalance (%s); alert will be resent",
                            type(exc).__name__)
                self._rewind(pending)
