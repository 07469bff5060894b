"""ISO-8601 as leadflow writes and reads it: UTC, to the millisecond. Pure: no clock.

UTC is spelled two ways, each kept where it already stands in records and tests:

* `iso_z` ends in ``Z``, Segment's spelling: the collector's ``receivedAt`` and corrected
  ``timestamp``, ack events, dead-letter summaries. The outbound models (pydantic) write
  their datetimes the same way, so every time field on an output topic ends in ``Z``.
* `iso_offset` ends in ``+00:00``: the stream's own times before a model re-writes them
  (alerts and assignments in the team table) and times inside text, such as the reason
  "team closed until 2026-11-30T08:00:00.000+00:00".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from pipeline.errors import LeadflowError


def _utc(when: int | datetime) -> datetime:
    if isinstance(when, datetime):
        # Naive means UTC here, as in `parse_iso` and the Segment models.
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return datetime.fromtimestamp(when / 1000, UTC)


# The score stage writes an event's time once per output of the event (every score change,
# stage change, alert): the same few milliseconds again and again.
@lru_cache(maxsize=4096)
def _offset_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@lru_cache(maxsize=4096)
def _z_ms(ms: int) -> str:
    return _offset_ms(ms).replace("+00:00", "Z")


def iso_offset(when: int | datetime) -> str:
    """Epoch milliseconds (or a datetime) as ``2026-11-30T08:00:00.000+00:00``."""
    if type(when) is int:
        return _offset_ms(when)
    return _utc(when).isoformat(timespec="milliseconds")


def iso_z(when: int | datetime) -> str:
    """Epoch milliseconds (or a datetime) as ``2026-11-30T08:00:00.000Z``."""
    if type(when) is int:
        return _z_ms(when)
    return iso_offset(when).replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """An ISO-8601 time with ``Z``, an offset or no zone (taken as UTC); ValueError if not one."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class TimeSpecError(LeadflowError, ValueError):
    """A time given on the command line is neither an ISO 8601 time nor an age."""


_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime) -> datetime:
    """ISO 8601 (UTC when no zone is given) or an age before `now` such as 30m, 2h, 7d."""
    m = _AGO.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        return parse_iso(text.strip())
    except ValueError:
        raise TimeSpecError(f"{text!r} is neither an ISO 8601 time "
                            "(2026-12-02T10:00:00Z) nor an age (30m, 2h, 7d)") from None
