"""Dead letters: the one place that decides what a dead-letter record says.

The stream's ingest, the collector and the alert forwarder all build their dead letters
here, so a field (such as the replay that produced a message) is filled the same way by all.
`leadflow deadletters` (pipeline/deadletters/replay.py) reads them back and replays them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pipeline.models.outputs import DeadLetter

#: Kafka header a replay puts on every message it produces: the replay's id. A message that
#: fails again carries it into its new dead letter, so a later replay can leave it alone.
REPLAY_HEADER = "leadflow-replay"
#: And the position (partition:offset) of the dead letter it replays, so a later replay knows
#: that letter was tried and failed again.
REPLAY_OF_HEADER = "leadflow-replay-of"

Headers = Iterable[tuple[str, bytes | None]]


def header(headers: Headers | None, name: str) -> str | None:
    """The value of one Kafka header, if present."""
    for key, value in headers or ():
        if key == name and value:
            return value.decode("utf-8", "replace")
    return None


def dead_letter(
    *, reason: str, detail: str, source_topic: str, partition: int, offset: int,
    timestamp_ms: int | None, key: bytes | None, value: bytes, received_ms: int,
    headers: Headers | None = None, origin: Literal["stream", "collector"] = "stream",
    batch_index: int | None = None, rules_version: str | None = None,
) -> DeadLetter:
    """The dead letter of one message: why, its bytes, where it came from, and its replay."""
    return DeadLetter(
        reason=reason,
        detail=detail,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        key_b64=base64.b64encode(key).decode() if key is not None else None,
        value_b64=base64.b64encode(value).decode(),
        value_size=len(value),
        received_at=datetime.fromtimestamp(received_ms / 1000, UTC),
        origin=origin,
        batch_index=batch_index,
        rules_version=rules_version,
        replay_id=header(headers, REPLAY_HEADER),
        replay_of=header(headers, REPLAY_OF_HEADER),
    )
