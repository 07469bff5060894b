"""Ingest: validate raw input messages; valid events go to the identity topic in envelopes,
the rest to the dead-letter topic with why."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline import deadletters
from pipeline.core.attribution import CAMPAIGN_COST, CampaignCost, campaign_cost
from pipeline.core.event import Event
from pipeline.core.identity import identity_key
from pipeline.errors import InvalidEvent
from pipeline.models.events import parse_message
from pipeline.stream.codec import encode_event
from pipeline.stream.produce import Send
from pipeline.stream.stages.records import Destinations, RawMessage, Rejected, envelopes

if TYPE_CHECKING:  # the stages count through it; importing it pulls in the web server
    from pipeline.metrics.registry import Metrics


@dataclass(slots=True)
class IngestResult:
    """Valid events (to be stitched), campaign costs and rejected messages, in input order."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    # "Campaign Cost" events: counted, not a lead's activity, so never stitched or scored
    costs: list[tuple[Event, CampaignCost]] = field(default_factory=list)
    # The internal form of each event, encoded here so that a message that validates but
    # cannot be re-encoded is rejected alone, not with the rest of its batch.
    encoded: list[bytes] = field(default_factory=list)


def ingest_batch(
    messages: Sequence[RawMessage],
    sources: Mapping[str, str],
    *,
    max_bytes: int,
    max_future_skew_ms: int,
) -> IngestResult:
    """Validate raw input messages; nothing raises: bad input becomes a Rejected."""
    out = IngestResult()
    for m in messages:
        if m.value is None:
            out.rejected.append(Rejected(m, "empty", "message has no value (tombstone)"))
            continue
        try:
            event = parse_message(
                m.value,
                source=sources.get(m.topic, ""),
                now_ms=m.timestamp_ms,
                max_bytes=max_bytes,
                max_future_skew_ms=max_future_skew_ms,
            )
            if event.type == "track" and event.name == CAMPAIGN_COST:
                out.costs.append((event, campaign_cost(event.message_id, event.properties)))
                continue
            encoded = encode_event(event)
        except InvalidEvent as exc:
            out.rejected.append(Rejected(m, exc.reason, exc.detail))
        except Exception as exc:  # a worker must never stop on input; keep the evidence
            out.rejected.append(Rejected(m, "internal", f"{type(exc).__name__}: {exc}"))
        else:
            out.events.append(event)
            out.encoded.append(encoded)
    return out


def identity_key_bytes(e: Event) -> bytes:
    """Kafka key of an event on the identity topic."""
    return identity_key(e).encode()


def dead_letter(rej: Rejected, *, now_ms: int | None = None,
                rules_version: str | None = None) -> bytes:
    """The dead-letter message: reason, detail, the original bytes and where they came from."""
    m = rej.message
    return deadletters.dead_letter(
        reason=rej.reason, detail=rej.detail, source_topic=m.topic, partition=m.partition,
        offset=m.offset, timestamp_ms=m.timestamp_ms, key=m.key, value=m.value or b"",
        received_ms=now_ms if now_ms is not None else m.timestamp_ms, headers=m.headers,
        rules_version=rules_version,
    ).to_bytes()


@dataclass(frozen=True, slots=True)
class Ingested:
    """An ingest batch's sends (envelopes to the identity topic, dead letters) and counts."""

    sends: tuple[Send, ...]
    events: tuple[Event, ...]
    rejected: tuple[Rejected, ...]
    #: (source, event type) -> events read
    events_in: Mapping[tuple[str, str], int]
    writes: Mapping[str, object] = field(default_factory=dict)  # ingest keeps no state
    costs: tuple[CampaignCost, ...] = ()

    def observe(self, metrics: Metrics, now_s: float) -> None:
        for rej in self.rejected:
            metrics.dead_letter(rej.reason)
        for (source, kind), n in self.events_in.items():
            metrics.event_in(source, kind, n)
        for cost in self.costs:
            metrics.campaign_cost(cost)


def ingest(
    messages: Sequence[RawMessage],
    sources: Mapping[str, str],
    dest: Destinations,
    *,
    max_bytes: int,
    max_future_skew_ms: int,
) -> Ingested:
    """Validate a batch of input messages (`ingest_batch`) and say what to send."""
    res = ingest_batch(messages, sources, max_bytes=max_bytes,
                       max_future_skew_ms=max_future_skew_ms)
    sends = [Send(dest.topics.deadletter, rej.message.key,
                  dead_letter(rej, rules_version=dest.rules_version), None)
             for rej in res.rejected]
    sends += envelopes(dest.identity,
                       ((identity_key_bytes(e), line)
                        for e, line in zip(res.events, res.encoded, strict=True)),
                       dest.partitions)
    return Ingested(tuple(sends), tuple(res.events), tuple(res.rejected),
                    Counter((e.source, e.type) for e in [*res.events, *(e for e, _ in res.costs)]),
                    costs=tuple(c for _, c in res.costs))


@dataclass(frozen=True, slots=True)
class Failed:
    """The dead letters of a batch whose stage raised: every message, with the error."""

    sends: tuple[Send, ...]
    count: int
    writes: Mapping[str, object] = field(default_factory=dict)

    def observe(self, metrics: Metrics, now_s: float) -> None:
        for _ in range(self.count):
            metrics.dead_letter("internal")


def failed(messages: Sequence[RawMessage], exc: BaseException, dest: Destinations) -> Failed:
    """Dead letters for a batch that could not be processed (nothing is dropped silently)."""
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    return Failed(tuple(Send(dest.topics.deadletter, m.key,
                             dead_letter(Rejected(m, "internal", detail),
                                         rules_version=dest.rules_version), None)
                        for m in messages), len(messages))
