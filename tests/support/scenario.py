"""product.md's lead story as Segment messages, and what the pure core makes of them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from pipeline.core.engine import apply
from pipeline.core.outputs import StageMove
from pipeline.core.rules import load_default_rules
from pipeline.models.events import parse_message

T0 = "2026-03-02T09:00:00.000Z"


def ts(minute: int) -> str:
    return f"2026-03-02T{9 + minute // 60:02d}:{minute % 60:02d}:00.000Z"


def scenario(anon: str, user: str) -> list[tuple[str, dict[str, Any]]]:
    """product.md's story: blog post, e-book, form, pricing x3, demo, accepted, opportunity."""
    ctx = {"library": {"name": "analytics.js", "version": "5.0"}}

    def page(i: int, path: str, name: str) -> tuple[str, dict[str, Any]]:
        return ("web", {"type": "page", "messageId": f"{user}-m{i}", "anonymousId": anon,
                        "timestamp": ts(i), "name": name,
                        "properties": {"url": f"https://example.com{path}", "path": path},
                        "context": {**ctx, "page": {"url": f"https://example.com{path}"}}})

    def track(i: int, src: str, event: str, **props: Any) -> tuple[str, dict[str, Any]]:
        return (src, {"type": "track", "messageId": f"{user}-m{i}", "anonymousId": anon,
                      "userId": user, "timestamp": ts(i), "event": event,
                      "properties": props, "context": ctx})

    return [
        page(1, "/blog/mql-vs-sql", "Blog Post"),
        page(2, "/resources/lead-scoring-ebook", "E-book"),
        ("web", {"type": "identify", "messageId": f"{user}-m3", "anonymousId": anon,
                 "userId": user, "timestamp": ts(3), "context": ctx,
                 "traits": {"email": f"{user}@globex.com", "title": "VP Sales",
                            "employees": 800, "industry": "software", "country": "US",
                            "company": {"name": "Globex"}}}),
        track(4, "web", "Document Downloaded", title="Lead scoring e-book"),
        track(5, "web", "Form Submitted", form="ebook"),
        page(6, "/pricing", "Pricing"),
        page(7, "/pricing", "Pricing"),
        page(8, "/pricing", "Pricing"),
        track(9, "web", "Demo Requested", form="demo"),
        track(10, "crm", "Lead Accepted"),
        track(11, "crm", "Opportunity Created", amount=12000),
    ]


def offline_moves(messages: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """What the pure core says for the same messages: (lead, from, to) of every applied move.

    Stitching by hand: a visitor's events belong to the user its anonymousId is later
    identified as, and are applied in the order produced.
    """
    rules = load_default_rules()
    users = {b["anonymousId"]: b["userId"] for _, b in messages
             if b.get("userId") and b.get("anonymousId")}
    states: dict[str, Any] = {}
    moves = []
    for src, body in messages:
        e = parse_message(orjson.dumps(body), source=src)
        lead = body.get("userId") or users.get(body.get("anonymousId", ""), e.lead_id)
        e = replace(e, lead_id=lead)
        res = apply(states.get(lead), e, rules)
        states[lead] = res.state
        moves += [(o.lead_id, o.from_stage, o.to_stage) for o in res.outputs
                  if isinstance(o, StageMove)]
    return moves
