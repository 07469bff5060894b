"""The account executive's side of routing: tail alerts, acknowledge them, forward them.

Alerts are handled as plain JSON dicts (not `RoutingAlert` models) on purpose: an AE tool must
keep working when the pipeline adds a field, and must show a message it cannot fully parse
rather than crash on it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.errors import BrokerError
from pipeline.kafka.security import KafkaSecurity, start_client

_TOPIC_AUTHORIZATION_FAILED = 29


def decode_alert(raw: bytes | None) -> dict[str, Any] | None:
    """The alert JSON object in ``raw``, or None if it is not a JSON object."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def routing_pattern(prefix: str) -> str:
    """The regular expression of every routing topic (``routing.*`` with the default prefix)."""
    return f"^{re.escape(prefix)}.+"


async def topic_partitions(
    bootstrap: str, names: list[str] | None = None, pattern: str | None = None,
    *, security: KafkaSecurity | None = None,
) -> tuple[list[TopicPartition], list[str]]:
    """(partitions, missing names) of the ``names`` and of every topic matching ``pattern``.

    Asked of the cluster each time (admin metadata), because a consumer's own metadata only
    covers topics it already tracks.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, **(security.client_kwargs() if security else {})
    )
    await start_client(admin, bootstrap, security)
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in names or [] if n in existing]
        missing = [n for n in names or [] if n not in existing]
        if missing:  # not listed: missing, or hidden by the cluster's ACLs (say which)
            denied = [m["topic"] for m in await admin.describe_topics(missing)
                      if m.get("error_code") == _TOPIC_AUTHORIZATION_FAILED]
            if denied:
                who = f" as {security.username!r}" if security and security.sasl else ""
                raise BrokerError(
                    f"not authorized to read topic {', '.join(denied)}{who}: the cluster needs "
                    "a Read ACL for this principal on the topic (and on its consumer group); "
                    "see deploy/SECURITY.md"
                )
        if pattern is not None:
            rx = re.compile(pattern)
            wanted += sorted(t for t in existing if rx.match(t) and t not in wanted)
        tps: list[TopicPartition] = []
        if wanted:
            for meta in await admin.describe_topics(wanted):
                if meta.get("error_code", 0) == 0:
                    tps += [
                        TopicPartition(meta["topic"], p["partition"])
                        for p in sorted(meta["partitions"], key=lambda p: p["partition"])
                    ]
        # describe_topics answers in any order: keep the caller's topic order.
        order = {t: i for i, t in enumerate(wanted)}
        tps.sort(key=lambda tp: (order[tp.topic], tp.partition))
        return tps, missing
    finally:
        await admin.close()
