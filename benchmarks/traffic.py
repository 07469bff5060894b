"""Fast, deterministic benchmark traffic: realistic Segment messages over many leads.

The bodies have the same shape as `pipeline.simulator` produces (page, track, identify with
traits, context with library, page and campaign), and pass leadflow's ingest validation.
Activity is skewed: each lead's weight is Pareto distributed, so a few leads are very active
and most have a handful of events. Every lead gets at least one event, and its first event is
an `identify` (so every key is a lead that the pipeline scores).

`generate(events, leads, seed)` returns ``[(source, key, value_bytes), ...]`` in send order.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.simulator import BLOG, COMPANIES, FIRST, FREE_DOMAINS, LAST, TITLES, UTM

# (kind, source, name, page path or None, properties, weight)
MIX: list[tuple[str, str, str, str | None, dict[str, Any], float]] = [
    ("page", "web", "Blog Post", "/blog/{slug}", {}, 35),
    ("page", "web", "Home", "/", {}, 15),
    ("page", "web", "Pricing", "/pricing", {}, 8),
    ("page", "web", "Comparison", "/compare/leadflow-vs-competitor", {}, 3),
    ("page", "web", "E-book", "/resources/lead-scoring-ebook", {}, 3),
    ("track", "email", "Email Opened", None, {"campaign": "nurture-1"}, 15),
    ("track", "email", "Email Link Clicked", None, {"campaign": "nurture-1"}, 5),
    ("track", "web", "Form Submitted", None, {"form": "ebook"}, 2),
    ("track", "web", "Document Downloaded", None, {"title": "Lead scoring e-book"}, 3),
    ("track", "product", "Trial Started", None, {"plan": "team"}, 1),
    ("track", "product", "Invite Sent", None, {"invitee_role": "member"}, 4),
    ("track", "product", "Feature Limit Reached", None, {"feature": "seats"}, 1),
    ("track", "web", "Demo Requested", None, {"form": "demo"}, 0.3),
    ("track", "crm", "Lead Accepted", None, {"owner": "rep-1"}, 0.2),
    ("track", "email", "Unsubscribed", None, {"campaign": "nurture-1"}, 0.2),
]
LIB = {"name": "leadflow-bench", "version": "1"}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def lead_id(n: int) -> str:
    return f"user-{n:07d}"


def identify(rng: random.Random, n: int, ts_ms: int) -> tuple[str, str, dict[str, Any]]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    domain, company, size, industry, country = rng.choice(COMPANIES)
    if rng.random() < 0.25:
        domain = rng.choice(FREE_DOMAINS)
    user = lead_id(n)
    body: dict[str, Any] = {
        "type": "identify",
        "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
        "anonymousId": f"anon-{n:07d}",
        "userId": user,
        "timestamp": _iso(ts_ms),
        "context": {"library": LIB},
        "traits": {
            "email": f"{first}.{last}{n}@{domain}",
            "firstName": first.title(), "lastName": last.title(),
            "title": rng.choice(TITLES),
            "company": {"name": company, "employee_count": size, "industry": industry},
            "employees": size, "industry": industry, "country": country,
        },
    }
    return "web", user, body


def activity(rng: random.Random, n: int, ts_ms: int) -> tuple[str, str, dict[str, Any]]:
    kind, source, name, path, props, _ = rng.choices(MIX, _WEIGHTS)[0]
    user = lead_id(n)
    ctx: dict[str, Any] = {"library": LIB}
    utm = UTM[n % len(UTM)]
    if utm:
        ctx["campaign"] = dict(utm)
    body: dict[str, Any] = {
        "type": kind,
        "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
        "anonymousId": f"anon-{n:07d}",
        "userId": user,
        "timestamp": _iso(ts_ms),
        "context": ctx,
    }
    if kind == "page":
        assert path is not None
        p = path.format(slug=rng.choice(BLOG))
        ctx["page"] = {"url": f"https://www.example.com{p}", "path": p}
        body["name"] = name
        body["properties"] = {"url": f"https://www.example.com{p}", "path": p}
    else:
        body["event"] = name
        body["properties"] = dict(props)
    return source, user, body


_WEIGHTS = [w for *_, w in MIX]


def generate(
    events: int, leads: int, *, seed: int = 7, start_ms: int, end_ms: int
) -> list[tuple[str, bytes, bytes]]:
    """`events` messages over `leads` leads (events >= leads), event times in [start, end]."""
    if events < leads:
        raise ValueError(f"--events ({events}) must be at least --leads ({leads})")
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.2) for _ in range(leads)]
    picks = list(range(leads)) + rng.choices(range(leads), weights, k=events - leads)
    rng.shuffle(picks)
    seen = bytearray(leads)
    out: list[tuple[str, bytes, bytes]] = []
    step = max(1, (end_ms - start_ms) // max(1, events))
    ts = start_ms
    for n in picks:
        ts += step
        if seen[n]:
            source, key, body = activity(rng, n, ts)
        else:
            seen[n] = 1
            source, key, body = identify(rng, n, ts)
        out.append((source, key.encode(), orjson.dumps(body)))
    return out


def live_events(count: int, leads: int, *, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Activity of already identified leads; the caller stamps `timestamp` at send time."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.2) for _ in range(leads)]
    return [activity(rng, n, 0) for n in rng.choices(range(leads), weights, k=count)]
