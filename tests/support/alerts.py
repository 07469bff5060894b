"""Alerts tests' helpers: one test's topic names, alert factories, a raw producer and reader."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.alerts import topic_partitions
from pipeline.settings import Settings, Topics

TEAM = "sales"
OTHER_TEAM = "emea"


@dataclass(frozen=True)
class AlertTopics:
    """Topic names of one test (all under a unique prefix) and the broker."""

    bootstrap: str
    topics: Topics

    def settings(self) -> Settings:
        """Settings pointing at this test's topics."""
        return Settings(bootstrap_servers=self.bootstrap, topics=self.topics)

    def env(self) -> dict[str, str]:
        """The same settings as LEADFLOW_ environment variables (for the CLI)."""
        t = self.topics
        return {
            "LEADFLOW_BOOTSTRAP_SERVERS": self.bootstrap,
            "LEADFLOW_TOPIC_ROUTING_PREFIX": t.routing_prefix,
            "LEADFLOW_TOPIC_ESCALATIONS": t.escalations,
            "LEADFLOW_TOPIC_CRM": t.crm,
            "LEADFLOW_TOPIC_DEADLETTER": t.deadletter,
        }


def make_alert(alert_id: str, lead_id: str, team: str = TEAM, **extra: Any) -> dict[str, Any]:
    """A routing alert as the pipeline writes it (the fields the AE tools read)."""
    alert: dict[str, Any] = {
        "schema_version": 1,
        "alert_id": alert_id,
        "lead_id": lead_id,
        "team": team,
        "kind": "instant",
        "temperature": "hot",
        "owner": "alice",
        "reassigned": False,
        "triggered_at": "2024-05-02T10:15:00Z",
        "triggered_ms": 1714644900000,
        "sla_seconds": 300,
        "due_at": "2024-05-02T10:20:00Z",
        "trigger": {"rule": "demo_request", "message_id": "m-1", "event_name": "Demo Requested"},
        "scores": {"total": 85.0, "fit": 20.0, "engagement": 55.0, "product": 10.0},
        "top_reasons": [
            {"rule": "demo_request", "points": 50.0, "count": 1},
            {"rule": "pricing_page", "points": 30.0, "count": 3},
        ],
        "lead": {"email": f"{lead_id}@example.com", "company": "Acme", "title": "VP Sales"},
    }
    alert.update(extra)
    return alert


async def produce(
    bootstrap: str, topic: str, alerts: list[dict[str, Any]], partition: int | None = None
) -> None:
    """Produce alerts with a plain producer (key = lead id), in order, waiting for acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for alert in alerts:
            await producer.send_and_wait(
                topic, orjson.dumps(alert), key=str(alert["lead_id"]).encode(),
                partition=partition,
            )
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, *, idle_s: float = 1.5) -> list[Any]:
    """Every record of ``topic`` (all partitions) up to its current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps, missing = await topic_partitions(bootstrap, [topic])
        assert not missing, missing
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + 20
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                batch = await consumer.getmany(tp, timeout_ms=int(idle_s * 1000))
                out.extend(batch.get(tp, []))
        return out
    finally:
        await consumer.stop()
