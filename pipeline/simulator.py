"""Synthetic traffic: realistic Segment messages from visitors, leads, e-mail, product and CRM.

Most visitors read a page or two and leave; some fill a form and become leads; a few read
pricing, compare us with a competitor, start a trial and request a demo, and sales then
accepts them and opens an opportunity. `generate` is deterministic for a seed (tests and
benchmarks use it); `run` produces the messages to Kafka at a given rate with a progress
display.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.kafka.security import KafkaSecurity, start_client
from pipeline.models.timefmt import iso_offset

FIRST = ["ana", "ben", "chen", "dara", "eli", "fatima", "gus", "hana", "ivan", "jo", "kim", "lea"]
LAST = ["smith", "garcia", "ng", "okafor", "muller", "rossi", "kowalski", "tanaka", "silva"]
COMPANIES = [
    ("acme.io", "Acme", 250, "software", "US"),
    ("globex.com", "Globex", 5000, "manufacturing", "DE"),
    ("initech.com", "Initech", 80, "software", "US"),
    ("umbrella.co.uk", "Umbrella", 1200, "healthcare", "GB"),
    ("hooli.com", "Hooli", 20000, "software", "US"),
    ("vandelay.fr", "Vandelay", 40, "retail", "FR"),
    ("stark.de", "Stark", 900, "manufacturing", "DE"),
    ("wayne.com", "Wayne", 3000, "finance", "US"),
]
FREE_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com"]
TITLES = ["VP Sales", "Head of Marketing", "CTO", "Software Engineer", "Marketing Manager",
          "Director of Operations", "Student", "Intern", "CEO", "Sales Operations Manager"]
BLOG = ["how-to-score-leads", "mql-vs-sql", "speed-to-lead", "revops-playbook", "b2b-funnels"]
UTM = [None, None, {"source": "google", "medium": "cpc", "name": "brand"},
       {"source": "linkedin", "medium": "social", "name": "q4-launch"},
       {"source": "newsletter", "medium": "email", "name": "weekly"}]


#: The demo's and `leadflow simulate`'s traffic by default: as many journeys as the shipped
#: teams can work in a day (the enterprise reps' daily caps hold; tests/test_demo.py checks
#: it), about a minute long at DEMO_RATE.
DEMO_VISITORS = 500
DEMO_RATE = 30.0


@dataclass(frozen=True, slots=True)
class Message:
    """One simulated message: which input source it belongs to, its key and its body."""

    source: str  # web | email | product | crm
    key: str
    body: dict[str, Any]

    def value(self) -> bytes:
        """The JSON bytes as a producer would send them."""
        return orjson.dumps(self.body)


class _Visitor:
    def __init__(self, rng: random.Random, n: int, start_ms: int, id_prefix: str = "") -> None:
        self.rng = rng
        self.prefix = id_prefix
        self.anon = f"anon-{id_prefix}{n:07d}-{rng.randrange(16**6):06x}"
        self.user: str | None = None
        self.t = start_ms
        self.n = n
        self.utm = rng.choice(UTM)

    def _base(self, kind: str, src_page: str | None = None) -> dict[str, Any]:
        self.t += self.rng.randint(5_000, 90_000)  # seconds to a minute and a half apart
        ctx: dict[str, Any] = {"library": {"name": "leadflow-simulator", "version": "1"}}
        if src_page is not None:
            ctx["page"] = {"url": f"https://www.example.com{src_page}", "path": src_page}
        if self.utm:
            ctx["campaign"] = dict(self.utm)
        body: dict[str, Any] = {
            "type": kind,
            "messageId": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "anonymousId": self.anon,
            "timestamp": iso_offset(self.t),
            "context": ctx,
        }
        if self.user:
            body["userId"] = self.user
        return body

    def page(self, path: str, name: str) -> Message:
        body = self._base("page", path)
        body["name"] = name
        body["properties"] = {"url": f"https://www.example.com{path}", "path": path}
        return Message("web", self.user or self.anon, body)

    def track(self, source: str, event: str, props: dict[str, Any] | None = None) -> Message:
        body = self._base("track")
        body["event"] = event
        body["properties"] = props or {}
        return Message(source, self.user or self.anon, body)

    def identify(self) -> Message:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        domain, company, size, industry, country = rng.choice(COMPANIES)
        if rng.random() < 0.25:
            domain = rng.choice(FREE_DOMAINS)
        self.user = f"user-{self.prefix}{self.n:07d}"
        body = self._base("identify")
        body["userId"] = self.user
        body["traits"] = {
            "email": f"{first}.{last}{self.n}@{domain}",
            "firstName": first.title(),
            "lastName": last.title(),
            "title": rng.choice(TITLES),
            "company": {"name": company, "employee_count": size, "industry": industry},
            "employees": size,
            "industry": industry,
            "country": country,
        }
        return Message("web", self.user, body)


def _journey(v: _Visitor) -> Iterator[Message]:
    """One visitor's story; the mix is skewed so that only a few become hot."""
    rng = v.rng
    yield v.page("/", "Home")
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        slug = rng.choice(BLOG)
        yield v.page(f"/blog/{slug}", "Blog Post")
    if rng.random() > 0.30:  # seven in ten never leave a name
        return
    if rng.random() < 0.5:
        yield v.page("/resources/lead-scoring-ebook", "E-book")
    yield v.identify()
    yield v.track("web", "Form Submitted", {"form": "ebook"})
    if rng.random() < 0.6:
        yield v.track("web", "Document Downloaded", {"title": "Lead scoring e-book"})
    if rng.random() < 0.4:
        yield v.track("email", "Email Opened", {"campaign": "nurture-1"})
        if rng.random() < 0.5:
            yield v.track("email", "Email Link Clicked", {"campaign": "nurture-1"})
    if rng.random() < 0.05:
        yield v.track("email", "Unsubscribed", {"campaign": "nurture-1"})
        return
    if rng.random() < 0.45:
        return
    for _ in range(rng.randint(1, 4)):
        yield v.page("/pricing", "Pricing")
    if rng.random() < 0.5:
        yield v.page("/compare/leadflow-vs-competitor", "Comparison")
    if rng.random() < 0.4:
        yield v.track("product", "Trial Started", {"plan": "team"})
        for _ in range(rng.randint(0, 4)):
            yield v.track("product", "Invite Sent", {"invitee_role": "member"})
        if rng.random() < 0.3:
            yield v.track("product", "Feature Limit Reached", {"feature": "seats"})
    if rng.random() < 0.35:
        yield v.track("web", "Demo Requested", {"form": "demo"})
        if rng.random() < 0.7:
            yield v.track("crm", "Lead Accepted", {"owner": "rep-1"})
            if rng.random() < 0.6:
                yield v.track("crm", "Opportunity Created", {"amount": 12000})
                if rng.random() < 0.4:
                    yield v.track("crm", "Deal Won", {"amount": 12000})
        else:
            yield v.track("crm", "Lead Rejected", {"reason": "no budget"})


def generate(
    visitors: int, *, seed: int = 7, start_ms: int | None = None, spread_ms: int = 3_600_000,
    id_prefix: str = "",
) -> Iterator[Message]:
    """Yield the messages of `visitors` journeys, interleaved roughly by event time.

    `id_prefix` goes into every user and anonymous id (`user-<prefix>0000007`): traffic
    that must not land on the leads of an earlier run.
    """
    rng = random.Random(seed)
    base = start_ms if start_ms is not None else 1_767_225_600_000  # 2026-01-01 UTC
    journeys = []
    for n in range(visitors):
        v = _Visitor(random.Random(rng.getrandbits(64)), n, base + rng.randrange(spread_ms),
                     id_prefix)
        journeys.append(_journey(v))
    # Round-robin over live journeys: realistic interleaving, per-visitor order kept.
    while journeys:
        alive = []
        for j in journeys:
            msg = next(j, None)
            if msg is not None:
                yield msg
                alive.append(j)
        journeys = alive


async def run(
    bootstrap: str,
    topics: dict[str, str],
    *,
    rate: float,
    visitors: int,
    seed: int = 7,
    id_prefix: str = "",
    live_time: bool = True,
    security: KafkaSecurity | None = None,
    progress: bool = True,
    stop: asyncio.Event | None = None,
) -> int:
    """Produce simulated traffic at `rate` messages/s; returns how many were sent.

    `topics` maps source (web, email, product, crm) to topic name. With `live_time` the
    journeys are shifted to end near now, so the pipeline sees current event times.
    """
    from aiokafka import AIOKafkaProducer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    msgs = list(generate(visitors, seed=seed, id_prefix=id_prefix))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                **(security.client_kwargs() if security else {}))
    await start_client(producer, bootstrap, security)
    sent = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    try:
        with Progress(
            TextColumn("[bold]simulator[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), disable=not progress, transient=False,
        ) as bar:
            task = bar.add_task("send", total=len(msgs), rate="")
            t0 = time.monotonic()
            for msg in msgs:
                if stop is not None and stop.is_set():
                    break
                if live_time:
                    msg.body["timestamp"] = iso_offset(int(time.time() * 1000))
                await producer.send(topics[msg.source], msg.value(), key=msg.key.encode())
                sent += 1
                if interval:
                    ahead = t0 + sent * interval - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if sent % 100 == 0:
                    el = time.monotonic() - t0
                    bar.update(task, completed=sent, rate=f"{sent / el:,.0f} msg/s")
            bar.update(task, completed=sent)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
