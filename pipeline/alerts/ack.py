"""`leadflow alerts ack`: acknowledge an alert with an "Alert Acknowledged" CRM track event.

The pipeline reads the event from the CRM input topic and stops the alert's SLA timer; the
event is keyed by the lead id, like every inbound event, so it lands on the lead's partition.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import pipeline
from pipeline.alerts import decode_alert, topic_partitions
from pipeline.core.stages import ALERT_ACKNOWLEDGED
from pipeline.errors import LeadflowError
from pipeline.kafka.security import KafkaSecurity, start_client
from pipeline.models.timefmt import iso_z

ACK_EVENT = ALERT_ACKNOWLEDGED
LIBRARY = "leadflow-cli"


class AlertNotFound(LeadflowError):
    """The alert id is on none of the routing topics."""


def ack_event(
    alert_id: str, lead_id: str, owner: str | None = None, *, now: datetime | None = None
) -> dict[str, Any]:
    """The Segment track event that acknowledges ``alert_id`` of ``lead_id``.

    ``owner`` is the acknowledging rep; it is left out when unknown rather than guessed from
    the alert, because the assigned owner and the rep who acknowledges can differ.
    """
    props: dict[str, Any] = {"alert_id": alert_id}
    if owner:
        props["owner"] = owner
    return {
        "type": "track",
        "event": ACK_EVENT,
        "userId": lead_id,
        "messageId": str(uuid.uuid4()),
        "timestamp": iso_z(now or datetime.now(UTC)),
        "properties": props,
        "context": {"library": {"name": LIBRARY, "version": pipeline.__version__}},
    }


async def find_alert(
    bootstrap: str, topic_pattern: str, alert_id: str, *, timeout_s: float = 15.0,
    security: KafkaSecurity | None = None,
) -> dict[str, Any]:
    """The alert with ``alert_id`` on any topic matching ``topic_pattern``, read from the start.

    The topics matching the pattern are listed once and their partitions assigned directly
    (no consumer group), and reading stops at the end offsets taken at the start: "not found"
    is then a definite answer instead of "nothing arrived before the timeout". If the alert
    was re-sent (reassignment after an SLA breach), the latest copy wins.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        # Earliest, so the reset aiokafka starts on assign agrees with seek_to_beginning.
        auto_offset_reset="earliest",
        **(security.client_kwargs() if security else {}),
    )
    deadline = time.monotonic() + timeout_s
    await start_client(consumer, bootstrap, security)
    try:
        tps, _ = await topic_partitions(bootstrap, pattern=topic_pattern, security=security)
        topics = sorted({tp.topic for tp in tps})
        if not tps:
            raise AlertNotFound(f"alert {alert_id} not found: no topic matches {topic_pattern}")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp, end in ends.items() if end > 0}
        found: dict[str, Any] | None = None
        read = 0
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AlertNotFound(
                    f"alert {alert_id} not found within {timeout_s:g}s "
                    f"({read} messages read on {len(topics)} topics; "
                    "pass --lead to skip the search)"
                )
            batch = await consumer.getmany(timeout_ms=max(1, min(500, int(left * 1000))))
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    read += 1
                    alert = decode_alert(record.value)
                    if alert is not None and alert.get("alert_id") == alert_id:
                        found = alert
            for tp in list(pending):
                # Compacted or transactional topics can end on a gap: position, not the last
                # record's offset, says whether the partition is done.
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if found is None or not isinstance(found.get("lead_id"), str):
            raise AlertNotFound(
                f"alert {alert_id} not found on {len(topics)} routing topics ({read} messages read)"
            )
        return found
    finally:
        await consumer.stop()


async def send_ack(
    bootstrap: str, topic: str, event: dict[str, Any], *, security: KafkaSecurity | None = None
) -> tuple[int, int]:
    """Produce ``event`` to ``topic`` (acks=all) and wait for the broker; (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
        **(security.client_kwargs() if security else {}),
    )
    await start_client(producer, bootstrap, security)
    try:
        meta = await producer.send_and_wait(
            topic, orjson.dumps(event), key=str(event["userId"]).encode()
        )
    finally:
        await producer.stop()
    return int(meta.partition), int(meta.offset)
