"""Rules files at a given revision, and the rules topic's records of them."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.core.rules import default_rules_text, parse_rules
from pipeline.published_rules import Published, decode, message

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
TOPIC = "leadflow.rules"


def revised(revision: int, mql: int = 60) -> str:
    """The shipped rules at `revision`, with another MQL line if asked."""
    text = default_rules_text().replace("version: 1\n", f"version: 1\nrevision: {revision}\n", 1)
    return text.replace("  mql: 60 ", f"  mql: {mql} ", 1)


def record(revision: int, offset: int = 0, mql: int = 60) -> Published:
    text = revised(revision, mql)
    got = decode(TOPIC, offset, message(parse_rules(text), text, "r.yaml", AT).to_bytes())
    assert isinstance(got, Published), got
    return got
