"""The worker's lead search (`GET /search?q=`) over raw leads-table records."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.engine import apply
from pipeline.core.rules import load_default_rules
from pipeline.errors import InvalidQuery
from pipeline.models.events import parse_message
from pipeline.stream.leadview import MAX_QUERY, search_leads, search_text

RULES = load_default_rules()


def record(lead: str, email: str, company: Any, title: str = "VP Sales") -> tuple[bytes, bytes]:
    body = {"type": "identify", "messageId": f"{lead}-id", "userId": lead,
            "timestamp": "2026-12-01T10:00:00Z", "traits": {
                "email": email, "title": title, "company": company, "employees": 300}}
    state = apply(None, parse_message(orjson.dumps(body), source="web"), RULES).state
    return lead.encode(), orjson.dumps({"s": state.to_dict()})


ITEMS = [record("u-1", "ada@acme.example", {"name": "Acme Corp"}),
         record("u-2", "bob@globex.example", "Globex"),
         record("u-3", "carl@initech.example", {"name": "Müller Technik"}, title="Acme fan")]


def test_finds_by_id_email_and_company_case_insensitively() -> None:
    assert [m.lead_id for m in search_leads(search_text("U-2"), ITEMS, RULES)] == ["u-2"]
    assert [m.lead_id for m in search_leads(search_text("ADA@acme"), ITEMS, RULES)] == ["u-1"]
    assert [m.lead_id for m in search_leads(search_text("globex"), ITEMS, RULES)] == ["u-2"]
    assert [m.lead_id for m in search_leads(search_text("MÜLLER"), ITEMS, RULES)] == ["u-3"]


def test_a_match_in_another_field_is_not_a_hit() -> None:
    # "acme" is u-3's title, not its e-mail or company: only u-1 matches
    assert [m.lead_id for m in search_leads(search_text("acme"), ITEMS, RULES)] == ["u-1"]


def test_match_carries_stage_score_email_and_company() -> None:
    (m,) = search_leads(search_text("u-1"), ITEMS, RULES)
    state = apply(None, parse_message(orjson.dumps({
        "type": "identify", "messageId": "u-1-id", "userId": "u-1",
        "timestamp": "2026-12-01T10:00:00Z", "traits": {
            "email": "ada@acme.example", "title": "VP Sales", "company": {"name": "Acme Corp"},
            "employees": 300}}), source="web"), RULES).state
    assert m.score == round(RULES.total(state.fit, state.engagement, state.product), 2)
    assert m.score > 0
    assert (m.stage, m.email, m.company) == (state.stage, "ada@acme.example", "Acme Corp")


def test_limit() -> None:
    assert len(search_leads(search_text("u-"), ITEMS, RULES, limit=2)) == 2


@pytest.mark.parametrize(("q", "why"), [(None, "empty"), ("  ", "empty"),
                                        ("x" * (MAX_QUERY + 1), f"at most {MAX_QUERY}"),
                                        ("a\nb", "control characters")])
def test_malformed_search(q: str | None, why: str) -> None:
    with pytest.raises(InvalidQuery, match=why):
        search_text(q)
