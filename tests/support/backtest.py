"""A small story of Segment messages for the backtest tests (file and Kafka)."""

from __future__ import annotations

from typing import Any

from tests.support.scenario import ts as _ts


def messages() -> list[dict[str, Any]]:
    """Ada goes all the way to an opportunity; Bob reads two blog posts and leaves."""
    def page(i: int, who: str, anon: str, path: str) -> dict[str, Any]:
        return {"type": "page", "messageId": f"{who}-{i}", "anonymousId": anon,
                "timestamp": _ts(i), "name": path,
                "context": {"page": {"url": f"https://example.com{path}"}}}

    def track(i: int, who: str, event: str) -> dict[str, Any]:
        return {"type": "track", "messageId": f"{who}-{i}", "userId": who,
                "anonymousId": f"anon-{who}", "timestamp": _ts(i), "event": event}

    return [
        page(1, "ada", "anon-ada", "/blog/mql-vs-sql"),
        page(1, "bob", "anon-bob", "/blog/one"),
        {"type": "identify", "messageId": "ada-2", "anonymousId": "anon-ada", "userId": "ada",
         "timestamp": _ts(2), "traits": {"email": "ada@globex.com", "title": "VP Sales",
                                         "employees": 800, "industry": "software",
                                         "country": "US"}},
        track(3, "ada", "Document Downloaded"),
        track(4, "ada", "Form Submitted"),
        page(5, "ada", "anon-ada", "/pricing"),
        page(6, "ada", "anon-ada", "/pricing"),
        page(7, "ada", "anon-ada", "/pricing"),
        page(7, "bob", "anon-bob", "/blog/two"),
        track(8, "ada", "Demo Requested"),
        track(9, "ada", "Lead Accepted"),
        track(10, "ada", "Opportunity Created"),
    ]
