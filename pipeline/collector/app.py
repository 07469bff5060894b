"""The collector's aiohttp application: Segment HTTP tracking API -> leadflow's input topics.

Request flow: CORS preflight answered in middleware; the write key (HTTP Basic user, else
`writeKey` in the body) picks the source and so the input topic; the body is read with a size
limit (after gzip decoding, which aiohttp does incrementally so a zip bomb stops at the limit);
every message is enriched (receivedAt, messageId when missing, type from the path, batch
context), validated with the same models the stream processors use. Each item of a batch has
its own outcome, as with Segment: valid items go to their input topic, each invalid one to the
dead-letter topic with its reason and bytes (origin `collector`, its batch index), and the
answer is 200 with the rejected indexes (SDKs drop a batch answered 4xx: one bad item must not
lose its neighbours). Only when Kafka has acknowledged every record (acks=all, idempotent
producer) does the client get its 200. A request-level problem (write key, body not JSON or
too large) gets a 4xx naming it; a single call that is invalid gets 400 and is dead-lettered
too; Kafka unreachable or too slow gets 503, so the client keeps the messages and retries.

Logs carry counts, the source and reason codes, never message contents (no e-mails, traits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from pipeline.collector.auth import basic_user, source_for
from pipeline.collector.limits import (
    IPNetwork,
    RateLimiter,
    client_ip,
    parse_networks,
    retry_after_s,
)
from pipeline.deadletters import dead_letter
from pipeline.errors import InvalidEvent
from pipeline.kafka.security import KafkaSecurity
from pipeline.models.events import to_event, validate
from pipeline.models.timefmt import iso_z, parse_iso
from pipeline.settings import Settings

log = logging.getLogger("pipeline.collector")

#: Path segment -> Segment call type. analytics.js (AJS next) posts to the one-letter forms
#: (`/v1/t`, `/v1/p`...) and its batching dispatcher to `/v1/b`; server SDKs use `/v1/batch`,
#: and Segment's HTTP API also calls the batch endpoint `/v1/import`.
CALLS: dict[str, str] = {
    "track": "track", "t": "track",
    "page": "page", "p": "page",
    "identify": "identify", "i": "identify",
    "alias": "alias", "a": "alias",
    "group": "group", "g": "group",
    "screen": "screen", "s": "screen",
}
BATCH = frozenset({"batch", "b", "import"})
ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sender(Protocol):
    """What the collector needs from Kafka: send records and wait for their acks."""

    async def send_all(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send (topic, key, value) records; return when all are acknowledged, else raise."""

    async def close(self) -> None:
        """Flush and close."""


class KafkaUnavailable(Exception):
    """Kafka could not be reached or did not acknowledge in time."""


class KafkaSender:
    """An idempotent AIOKafkaProducer (acks=all), started lazily and restarted after failures.

    Lazy start lets the collector come up while Kafka is down (answering 503) and recover by
    itself when Kafka is back, instead of crash-looping.
    """

    def __init__(
        self, bootstrap: str, *, ack_timeout_s: float, max_request_bytes: int,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.ack_timeout_s = ack_timeout_s
        self.max_request_bytes = max_request_bytes
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _started(self) -> Any:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                p = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,  # let one request's messages share a produce request
                    request_timeout_ms=int(self.ack_timeout_s * 1000),
                    max_request_size=self.max_request_bytes,
                    client_id="leadflow-collector",
                    **(self.security.client_kwargs() if self.security else {}),
                )
                try:
                    await asyncio.wait_for(p.start(), self.ack_timeout_s)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await p.stop()
                    raise
                self._producer = p
        return self._producer

    async def send_all(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send every record and wait for all acks; KafkaUnavailable on any failure.

        Records go as one record batch per partition (the partition Kafka's default
        partitioner gives their key): a future per message cost more than the rest of a
        request's work."""
        from aiokafka.errors import KafkaError

        from pipeline.stream.keys import partition_for
        from pipeline.stream.produce import Send, send_records

        try:
            p = await self._started()

            async def send() -> None:
                counts: dict[str, int] = {}
                for topic in {t for t, _, _ in records}:
                    counts[topic] = len(await p.partitions_for(topic))
                await send_records(p, [Send(t, k, v, partition_for(k, counts[t]))
                                       for t, k, v in records])

            await asyncio.wait_for(send(), self.ack_timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            # A producer that failed to start is thrown away above; one that started but
            # failed now is kept: aiokafka reconnects by itself.
            raise KafkaUnavailable(type(exc).__name__) from exc

    async def close(self) -> None:
        """Flush pending records and stop the producer."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None


@dataclass
class Problem(Exception):
    """A request the collector refuses: HTTP status, reason code, message, per-item errors."""

    status: int
    code: str
    message: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        """The JSON error response."""
        body: dict[str, Any] = {"success": False, "error": self.code, "message": self.message}
        if self.errors:  # the enriched message is kept for the dead letter, not echoed
            body["errors"] = [{k: v for k, v in e.items() if k != "message"}
                              for e in self.errors]
        return web.Response(
            status=self.status, body=orjson.dumps(body), content_type="application/json",
            headers=self.headers,
        )


def _record_key(msg: dict[str, Any]) -> bytes:
    """The Kafka key of a message on its input topic: the user, else the visitor."""
    return str(msg.get("userId") or msg.get("anonymousId")).encode()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def _skew_corrected(msg: dict[str, Any], received: datetime) -> str | None:
    """Segment's clock-skew correction: timestamp = receivedAt - (sentAt - originalTimestamp).

    Browsers' clocks are often wrong; the difference between two client times is still right.
    """
    sent = _parse_time(msg.get("sentAt"))
    original = _parse_time(msg.get("originalTimestamp"))
    if sent is None or original is None:
        return None
    fixed = received - (sent - original)
    return iso_z(fixed)


def enrich(
    msg: dict[str, Any], *, call: str | None, received_ms: int, batch: dict[str, Any] | None,
    received_iso: str | None = None,
) -> dict[str, Any]:
    """The message as it goes on Kafka: type from the path, batch-level fields merged in,
    receivedAt set by us, a messageId generated when missing, the write key removed."""
    out = dict(msg)
    if call is not None and "type" not in out:
        out["type"] = call
    if batch:
        # Batch-level context/integrations apply to every item (items win on conflicts).
        for k in ("context", "integrations"):
            if isinstance(batch.get(k), dict):
                item = out.get(k)
                out[k] = {**batch[k], **item} if isinstance(item, dict) else batch[k]
        if "sentAt" not in out and isinstance(batch.get("sentAt"), str):
            out["sentAt"] = batch["sentAt"]
    out.pop("writeKey", None)  # a credential: never written to a topic
    out["receivedAt"] = received_iso or iso_z(received_ms)
    if not out.get("messageId"):
        # Segment libraries always send one; for hand-written calls (curl) we make one up.
        # Retries of such calls cannot be deduplicated: clients should send their own.
        out["messageId"] = f"lf-{uuid.uuid4()}"
    if "timestamp" not in out:
        fixed = _skew_corrected(out, datetime.fromtimestamp(received_ms / 1000, UTC))
        if fixed is not None:
            out["timestamp"] = fixed
    return out


@dataclass
class Collector:
    """The collector's state: settings, the Kafka sender and the rate limiters."""

    settings: Settings
    sender: Sender
    limiter: RateLimiter  # per write key
    ip_limiter: RateLimiter  # per client IP
    clock_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    trusted: tuple[IPNetwork, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.trusted = parse_networks(self.settings.collector_trusted_proxies)

    def client_of(self, request: web.Request) -> str:
        """The client IP: the peer, or X-Forwarded-For when the peer is a trusted proxy."""
        return client_ip(request.remote, request.headers.getall("X-Forwarded-For", []),
                         self.trusted)

    def topic_of(self, source: str) -> str:
        """The input topic of a source."""
        t = self.settings.topics
        return {"web": t.web, "email": t.email, "product": t.product, "crm": t.crm}[source]

    async def read_body(self, request: web.Request, limit: int) -> bytes:
        """The (gzip-decoded) body, refusing more than `limit` bytes with 413."""
        if request.content_length is not None and request.content_length > limit:
            raise Problem(413, "too_large", f"request body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await request.content.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:  # counted after decoding: a small gzip can be a big body
                    raise Problem(413, "too_large", f"request body is larger than {limit} bytes")
                chunks.append(chunk)
        except RequestPayloadError:
            raise Problem(400, "bad_encoding", "the body cannot be decoded "
                          "(Content-Encoding does not match the bytes)") from None
        return b"".join(chunks)

    def authenticate(self, key: str | None) -> str:
        """The source of a write key, or 401."""
        source = source_for(self.settings.write_keys, key)
        if source is None:
            what = "no write key" if not key else "unknown write key"
            raise Problem(401, "unauthorized", f"{what}: send it as the HTTP Basic user name "
                          "or as writeKey in the body",
                          headers={"WWW-Authenticate": 'Basic realm="leadflow"'})
        return source

    def admit_ip(self, ip: str) -> None:
        """429 when the client IP's token bucket is empty."""
        wait = self.ip_limiter.admit(ip)
        if wait > 0:
            raise Problem(429, "rate_limited", "too many messages from this client address",
                          headers={"Retry-After": str(retry_after_s(wait))})

    def admit(self, key: str) -> None:
        """429 when the key's token bucket is empty."""
        wait = self.limiter.admit(key)
        if wait > 0:
            raise Problem(429, "rate_limited", "too many messages for this write key",
                          headers={"Retry-After": str(retry_after_s(wait))})

    def check(self, items: list[Any], call: str | None, batch: dict[str, Any] | None,
              now_ms: int) -> tuple[list[tuple[dict[str, Any], bytes]], list[dict[str, Any]]]:
        """Enrich and validate every message: (valid messages with their encoding,
        rejections naming each item)."""
        max_item = self.settings.collector_max_message_bytes
        skew_ms = int(self.settings.max_future_skew_s * 1000)
        errors: list[dict[str, Any]] = []
        out: list[tuple[dict[str, Any], bytes]] = []
        too_big = False
        received_iso = iso_z(now_ms)
        for i, item in enumerate(items):
            where = f"batch[{i}]" if batch is not None else "body"
            if not isinstance(item, dict):
                errors.append({"index": i, "item": where, "reason": "not_an_object",
                               "detail": f"{where} is not a JSON object"})
                continue
            msg = enrich(item, call=call, received_ms=now_ms, batch=batch,
                         received_iso=received_iso)
            if call is not None and msg.get("type") != call:
                errors.append({"index": i, "item": where, "reason": "invalid", "message": msg,
                               "detail": f"type: {msg.get('type')!r} posted to /v1/{call}"})
                continue
            encoded = orjson.dumps(msg)
            size = len(encoded)
            if size > max_item:
                too_big = True
                errors.append({"index": i, "item": where, "reason": "oversize", "message": msg,
                               "detail": f"{where} is {size} bytes, the limit is {max_item}"})
                continue
            try:
                to_event(validate(msg), now_ms=now_ms, max_future_skew_ms=skew_ms)
            except InvalidEvent as exc:
                errors.append({"index": i, "item": where, "reason": exc.reason, "message": msg,
                               "detail": f"{where}.{exc.detail}"})
                continue
            out.append((msg, encoded))
        if errors and batch is None:  # a single call: the client is told in the status too
            status, code = (413, "too_large") if too_big else (400, "invalid")
            raise Problem(status, code, errors[0]["detail"], errors)
        return out, errors

    def dead_letters(self, items: list[Any], errors: list[dict[str, Any]], topic: str,
                     now_ms: int, *, batched: bool) -> list[tuple[str, bytes, bytes]]:
        """One dead letter per rejected item: the message as it would have gone on `topic`
        (enriched, write key removed) and its record key, so that a replay produces it as the
        collector would have; an item that is not an object, as the client sent it."""
        out = []
        for err in errors:
            msg = err.get("message")
            raw = orjson.dumps(msg if msg is not None else items[err["index"]])
            dl = dead_letter(
                reason=err["reason"], detail=err["detail"], source_topic=topic, partition=0,
                offset=0, timestamp_ms=now_ms,
                key=_record_key(msg) if msg and (msg.get("userId") or msg.get("anonymousId"))
                else None,
                value=raw, received_ms=now_ms, origin="collector",
                batch_index=err["index"] if batched else None)
            out.append((self.settings.topics.deadletter, b"collector", dl.to_bytes()))
        return out

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/{call}: one Segment call or a batch."""
        path = request.match_info["call"]
        call = CALLS.get(path)
        if call is None and path not in BATCH:
            raise Problem(404, "not_found", f"unknown endpoint /v1/{path}")
        is_batch = call is None
        ip = self.client_of(request)
        self.admit_ip(ip)  # first: a flood from one client costs no key lookups
        header_key = basic_user(request.headers.get("Authorization"))
        if header_key is not None:  # refuse before reading the body
            source = self.authenticate(header_key)
            self.admit(header_key)
        s = self.settings
        limit = s.collector_max_batch_bytes if is_batch else s.collector_max_message_bytes
        raw = await self.read_body(request, limit)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Problem(400, "bad_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise Problem(400, "not_an_object", "the body must be a JSON object")
        if header_key is None:  # sendBeacon and some SDKs put the key in the body
            body_key = body.get("writeKey")
            key = body_key if isinstance(body_key, str) else ""
            source = self.authenticate(key)
            self.admit(key)
        else:
            key = header_key
        now_ms = self.clock_ms()
        topic = self.topic_of(source)
        if is_batch:
            items = body.get("batch")
            if not isinstance(items, list) or not items:
                raise Problem(400, "invalid", "batch: a non-empty list of messages is required")
        else:
            items = [body]
        try:
            msgs, errors = self.check(items, call, body if is_batch else None, now_ms)
        except Problem as p:  # an invalid single call: refused, and kept as a dead letter
            await self._send(self.dead_letters(items, p.errors, topic, now_ms, batched=False),
                             source)
            raise
        self.limiter.spend(key, len(items))
        self.ip_limiter.spend(ip, len(items))
        records = [(topic, _record_key(m), encoded) for m, encoded in msgs]
        await self._send([*records, *self.dead_letters(items, errors, topic, now_ms,
                                                        batched=is_batch)], source)
        log.debug("accepted source=%s messages=%d rejected=%d", source, len(records),
                  len(errors))
        if errors:
            return web.json_response({"success": True, "rejected": [
                {"index": e["index"], "reason": e["reason"], "detail": e["detail"]}
                for e in errors]})
        return web.json_response({"success": True})

    async def _send(self, records: list[tuple[str, bytes, bytes]], source: str) -> None:
        """Produce and wait for the acks; 503 when Kafka does not acknowledge."""
        if not records:
            return
        try:
            await self.sender.send_all(records)
        except KafkaUnavailable as exc:
            log.warning("kafka unavailable: source=%s messages=%d error=%s",
                        source, len(records), exc)
            raise Problem(503, "kafka_unavailable", "Kafka did not acknowledge the messages; "
                          "retry later", headers={"Retry-After": "5"}) from None


#: The Collector of an app (for tests and embedding).
COLLECTOR: web.AppKey[Collector] = web.AppKey("collector", Collector)


def _cors_headers(settings: Settings, origin: str | None) -> dict[str, str]:
    allowed = settings.collector_cors_origins
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin and origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


def _middlewares(settings: Settings) -> list[Any]:
    @web.middleware
    async def cors_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        cors = _cors_headers(settings, request.headers.get("Origin"))
        if request.method == "OPTIONS":  # preflight: fetch() with JSON or Authorization
            return web.Response(status=204, headers={
                **cors,
                "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "86400",
            })
        try:
            resp = await handler(request)
        except Problem as p:
            # Reason codes and counts only: the message text may name fields, never values.
            log.info("refused %s %s: %d %s", request.method, request.path, p.status, p.code)
            resp = p.response()
        except web.HTTPException as exc:
            if exc.status == 405 or exc.status == 404:
                resp = Problem(exc.status, "not_found" if exc.status == 404 else
                               "method_not_allowed", exc.reason).response()
            else:
                raise
        resp.headers.update(cors)
        return resp

    return [cors_and_errors]


def _snippet() -> bytes:
    return resources.files("pipeline.collector").joinpath("static/leadflow.js").read_bytes()


def create_app(
    settings: Settings,
    *,
    bootstrap: str | None = None,
    sender: Sender | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The collector application. Give `bootstrap` (Kafka) or a ready `sender`."""
    if sender is None:
        if bootstrap is None:
            raise ValueError("create_app needs bootstrap servers or a sender")
        sender = KafkaSender(
            bootstrap, ack_timeout_s=settings.collector_ack_timeout_s,
            # a whole batch may go in one produce request
            max_request_bytes=max(1024 * 1024, 2 * settings.collector_max_batch_bytes),
            security=KafkaSecurity.from_settings(settings),
        )
    collector = Collector(
        settings, sender,
        RateLimiter(settings.collector_rate_per_s, settings.collector_burst, clock),
        RateLimiter(settings.collector_ip_rate_per_s, settings.collector_ip_burst, clock),
    )
    # client_max_size is the raw (possibly gzipped) body; read_body limits the decoded size.
    app = web.Application(middlewares=_middlewares(settings),
                          client_max_size=settings.collector_max_batch_bytes + 1024)
    app[COLLECTOR] = collector
    snippet = _snippet()

    async def leadflow_js(_request: web.Request) -> web.Response:
        return web.Response(body=snippet, content_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=300"})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def close_sender(_app: web.Application) -> None:
        await collector.sender.close()

    app.router.add_post("/v1/{call}", collector.handle)
    app.router.add_get("/leadflow.js", leadflow_js)
    app.router.add_get("/healthz", health)
    app.router.add_get("/health", health)  # the earlier name, kept for existing probes
    app.on_cleanup.append(close_sender)
    return app
