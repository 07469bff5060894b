"""`leadflow alerts tail`: follow routing topics and print one line per alert.

The tail reads with manually assigned partitions and no consumer group: it is a viewer, so it
must neither commit offsets nor take partitions away from a forwarder or another AE's tail.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from rich.text import Text

from pipeline.alerts import decode_alert, topic_partitions
from pipeline.errors import ConfigError
from pipeline.kafka.security import KafkaSecurity, start_client
from pipeline.models.timefmt import parse_iso

#: Called once per message: (topic, raw value). Returning is all it has to do.
Sink = Callable[[str, bytes | None], None]

# Lead data comes from web forms: terminal control characters in a company name must not be
# able to move the cursor or change colours in the AE's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class TailResult:
    """What a tail run did: messages shown and why it stopped."""

    shown: int
    reason: str  # "max", "timeout" or "stopped"


def _clean(value: Any) -> str:
    return _CONTROL.sub("?", str(value))


def _hhmmss(iso: Any) -> str:
    """``12:03:04`` from an ISO-8601 string; the raw text when it does not parse."""
    if not isinstance(iso, str):
        return "-"
    try:
        return parse_iso(iso).strftime("%H:%M:%S")
    except ValueError:
        return _clean(iso)


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value:g}"


def _reasons(alert: Mapping[str, Any], limit: int = 3) -> str:
    parts: list[str] = []
    reasons = alert.get("top_reasons")
    for r in reasons[:limit] if isinstance(reasons, list) else []:
        if not isinstance(r, dict):
            continue
        points = r.get("points")
        sign = "+" if isinstance(points, int | float) and points >= 0 else ""
        count = r.get("count")
        suffix = f" ({count}x)" if isinstance(count, int) else ""
        parts.append(f"{_clean(r.get('rule', '?'))} {sign}{_num(points)}{suffix}")
    return ", ".join(parts) or "-"


def _lead(alert: Mapping[str, Any]) -> str:
    lead = alert.get("lead")
    bits = [_clean(alert.get("lead_id", "?"))]
    if isinstance(lead, dict):
        # The AE needs the contact to act on the alert; this is their own terminal, not a log.
        who = [lead.get(k) for k in ("name", "email", "title", "company")]
        extra = " · ".join(_clean(v) for v in who if v)
        if extra:
            bits.append(f"({extra})")
    return " ".join(bits)


def format_alert(alert: Mapping[str, Any], topic: str = "") -> Text:
    """One readable line: time, team, kind, lead, owner, score, top reasons and SLA due.

    Escalations (they have ``from_owner``/``breached_at``) get their own line shape. Missing
    fields show as ``-``/``?`` rather than failing, so a newer alert shape still prints.
    """
    team = _clean(alert.get("team") or topic or "?")
    if "breached_at" in alert or "from_owner" in alert:
        line = Text()
        line.append(_hhmmss(alert.get("breached_at")), style="dim")
        line.append(f"  {team}  ", style="bold")
        line.append("ESCALATION", style="bold red")
        line.append(f"  lead {_clean(alert.get('lead_id', '?'))}")
        line.append(
            f"  {_clean(alert.get('from_owner') or '-')} -> {_clean(alert.get('to_owner') or '-')}"
        )
        line.append(f"  alert {_clean(alert.get('alert_id', '?'))}", style="dim")
        if alert.get("reason"):
            line.append(f"  {_clean(alert['reason'])}", style="red")
        return line

    scores = alert.get("scores") if isinstance(alert.get("scores"), dict) else {}
    assert isinstance(scores, dict)
    kind = _clean(alert.get("kind") or "?")
    line = Text()
    line.append(_hhmmss(alert.get("triggered_at")), style="dim")
    line.append(f"  {team}  ", style="bold")
    line.append(f"{kind:<9}", style="bold magenta" if kind == "instant" else "magenta")
    line.append(f"  {_lead(alert)}", style="cyan")
    owner = alert.get("owner")
    line.append(f"  owner {_clean(owner) if owner else 'UNASSIGNED'}",
                style="green" if owner else "bold yellow")
    line.append(
        f"  score {_num(scores.get('total'))} (fit {_num(scores.get('fit'))}, "
        f"eng {_num(scores.get('engagement'))}, prod {_num(scores.get('product'))})"
    )
    line.append(f"  {_reasons(alert)}", style="dim")
    if alert.get("due_at"):
        sla = alert.get("sla_seconds")
        within = f" ({_num(sla)}s)" if sla is not None else ""
        line.append(f"  SLA due {_hhmmss(alert.get('due_at'))}{within}", style="yellow")
    else:
        line.append("  no SLA", style="dim")
    line.append(f"  alert {_clean(alert.get('alert_id', '?'))}", style="dim")
    return line


def json_line(raw: bytes | None) -> str:
    """The alert as compact one-line JSON (re-encoded, so a pretty-printed value stays one line).

    A value that is not JSON is passed on as a JSON string, so the output stays valid JSON Lines.
    """
    if raw is None:
        return "null"
    try:
        return orjson.dumps(orjson.loads(raw)).decode()
    except orjson.JSONDecodeError:
        return orjson.dumps(raw.decode("utf-8", errors="replace")).decode()


def readable_line(topic: str, raw: bytes | None) -> Text:
    """The readable line of one message, or a short note for one that is not an alert."""
    alert = decode_alert(raw)
    if alert is None:
        return Text(f"(not an alert: {len(raw or b'')} bytes on {topic})", style="red")
    return format_alert(alert, topic)


async def tail(
    bootstrap: str,
    topics: Iterable[str],
    sink: Sink,
    *,
    from_start: bool = False,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    stop: asyncio.Event | None = None,
    security: KafkaSecurity | None = None,
) -> TailResult:
    """Feed every message of ``topics`` to ``sink`` until ``max_messages``, timeout or ``stop``.

    Starts at the end of each partition (only new alerts) unless ``from_start``. The end
    offsets are read before the first poll, so an alert produced once this returned from its
    setup is never missed.
    """
    names = list(dict.fromkeys(topics))
    stop = stop or asyncio.Event()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        # The reset aiokafka starts on assign must agree with the seek below, or it can win.
        auto_offset_reset="earliest" if from_start else "latest",
        **(security.client_kwargs() if security else {}),
    )
    await start_client(consumer, bootstrap, security)
    try:
        tps, missing = await topic_partitions(bootstrap, names, security=security)
        if missing:
            raise ConfigError(
                f"topic {', '.join(missing)} does not exist "
                "(create it with `leadflow topics create --teams ...`)"
            )
        consumer.assign(tps)
        if from_start:
            await consumer.seek_to_beginning(*tps)
        else:
            for tp, offset in (await consumer.end_offsets(tps)).items():
                consumer.seek(tp, offset)
        shown = 0
        while not stop.is_set():
            if max_messages is not None and shown >= max_messages:
                return TailResult(shown, "max")
            wait_ms = 500
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return TailResult(shown, "timeout")
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            batch = await consumer.getmany(timeout_ms=wait_ms)
            # Several partitions: print in timestamp order within one poll, the best order a
            # viewer can give without waiting.
            records = sorted(
                (r for rs in batch.values() for r in rs), key=lambda r: (r.timestamp, r.offset)
            )
            for record in records:
                if max_messages is not None and shown >= max_messages:
                    break
                sink(record.topic, record.value)
                shown += 1
        return TailResult(shown, "stopped")
    finally:
        await consumer.stop()
