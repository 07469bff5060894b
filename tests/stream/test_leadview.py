"""The lead document shows the lead's journey and whether it is in nurture."""

from __future__ import annotations

from types import MappingProxyType

from pipeline.core.engine import apply_batch
from pipeline.core.event import Event
from pipeline.core.rules import load_default_rules
from pipeline.stream.leadview import lead_document

RULES = load_default_rules()


def test_document_has_touches_and_nurture() -> None:
    evs = [Event("p1", "u1", "page", 1_000, user_id="u1",
                 url="https://a.io/?utm_source=google&utm_medium=cpc&utm_campaign=brand"),
           Event("e1", "u1", "track", 2_000, name="Email Link Clicked", user_id="u1",
                 utm=MappingProxyType({"source": "newsletter", "medium": "email"}))]
    state = apply_batch(None, evs, RULES).state
    doc = lead_document("u1", {"s": state.to_dict(), "seen": {}}, RULES)
    assert [(t["channel"], t["campaign"], t["marks"]) for t in doc["touches"]] == [
        ("paid_search", "brand", ["lead"]), ("email", None, [])]
    assert doc["nurture"] is None
