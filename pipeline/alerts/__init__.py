"""The account executive's side of routing: tail alerts, acknowledge them, forward them.

Alerts are handled as plain JSON dicts (not `RoutingAlert` models) on purpose: an AE tool must
keep working when the pipeline adds a field, and must show a message it cannot fully parse
rather than crash on it.
"""

from __future__ import annotations

from typing import Any

import orjson


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
    import re

    return f"^{re.escape(prefix)}.+"
