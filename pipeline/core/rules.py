"""The rules file revenue operations own: models, loading with line numbers, compilation.

One YAML file holds every scoring rule (`engagement`, `fit`, `product`, `negative`), the
score `groups` and how they combine, the `thresholds`, `decay` and the alert `cooldown`.
`load_rules(path)` is the only place in the core that reads a file; every problem with a
rules file becomes a `RulesError` whose message names the file, the line and the path
inside the file, e.g. ``rules.yaml:42 engagement[3].points: Input should be a valid integer``.

`compile_rules` turns the validated model into `CompiledRules`: event rules indexed by
(event type, name) so that matching one event is a dict lookup plus a few checks, with
URL globs and regexes compiled once. The engine never builds pydantic objects per event.

A `routing:` section is reserved for team/rep assignment (owned by the routing module);
it is accepted as a raw mapping here until that model is plugged in.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from pipeline.core.attribution import MODELS, Model

# Durations live in their own module so that routing can use them too.
from pipeline.core.durations import Duration, parse_duration
from pipeline.core.event import Event, EventType
from pipeline.core.routing import DEFAULT_ROUTING, RoutingRules
from pipeline.core.touches import OTHER, Channel, ChannelPattern, TouchFields
from pipeline.errors import RulesError

RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
Scalar = str | int | float | bool
GroupName = Literal["fit", "engagement", "product"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- rule models -------------------------------------------------------------------------


class Cap(_Model):
    """At most `points` from one rule per `window` (tumbling windows aligned to the epoch)."""

    points: int = Field(gt=0)
    window: Duration


class Range(_Model):
    """An inclusive numeric range; either end may be left open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


#: The tests a TraitCondition can make; it makes exactly one.
_TRAIT_TESTS = ("contains_any", "any_of", "range", "free_email", "domain_in", "domain_endswith")


class TraitCondition(_Model):
    """One condition on the lead's latest traits (identify and group calls); exactly one test.

    `trait` may be a dotted path (``company.employee_count``) or a list of paths, the first
    one present counting (Segment's spec path first, a flat custom trait as a fallback). The
    domain tests read the domain of the e-mail address in `trait` (default ``email``).
    """

    trait: str | list[str] = "email"
    contains_any: list[str] | None = Field(default=None, description="Case-insensitive words.")
    any_of: list[str] | None = Field(default=None, description="Case-insensitive equality.")
    range: Range | None = None
    free_email: bool | None = Field(
        default=None, description="true: a free mail domain; false: a business domain."
    )
    domain_in: list[str] | None = None
    domain_endswith: list[str] | None = Field(default=None, description="e.g. ['.edu']")

    def paths(self) -> tuple[str, ...]:
        """The trait paths read, in order of preference."""
        return (self.trait,) if isinstance(self.trait, str) else tuple(self.trait)

    @model_validator(mode="after")
    def _exactly_one(self) -> TraitCondition:
        if isinstance(self.trait, list) and not self.trait:
            raise ValueError("trait: give a path or a non-empty list of paths")
        given = [k for k in _TRAIT_TESTS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of contains_any, any_of, range, free_email, "
                             f"domain_in, domain_endswith (got {', '.join(given) or 'none'})")
        return self


class Requirement(_Model):
    """What a lead must meet before an alert reaches a team's queue with an SLA.

    A hand-raise or hot score that fails goes to the review topic with the reason instead:
    sales time is the scarcest resource, and nothing is dropped silently.
    """

    min_fit: float | None = Field(
        default=None, description="The fit group (negative trait rules included) at least this.")
    none_of: list[RuleId] = Field(
        default=[], description="Fit or negative trait rules that must not hold (outside the ICP).")
    traits: list[TraitCondition] = Field(
        default=[], description="Trait conditions that must all hold.")


class Trigger(_Model):
    """An instant trigger: move the lead to `stage` and/or mark it hot, whatever its score."""

    stage: Literal["mql", "sql", "pql"] | None = None
    hot: bool = False
    require: Requirement | None = Field(
        default=None, description="Conditions on top of alerts.require; failing: review.")

    @model_validator(mode="after")
    def _does_something(self) -> Trigger:
        if self.stage is None and not self.hot:
            raise ValueError("a trigger needs a stage, hot: true, or both")
        return self


class EventMatch(_Model):
    """Which events a rule matches; every condition given must hold."""

    type: EventType = "track"
    name: str | list[str] | None = Field(
        default=None, description="Track event name(s) or page name(s); none: any name."
    )
    source: str | None = None
    properties: dict[str, Scalar] | None = Field(default=None, description="Equality.")
    properties_contains: dict[str, str] | None = Field(
        default=None, description="Case-insensitive substring of the property's value."
    )
    url: str | None = Field(default=None, description="Glob on the page URL, e.g. */pricing*")
    url_regex: str | None = None
    utm: dict[str, str] | None = Field(
        default=None, description="context.campaign fields, case-insensitive equality."
    )

    @model_validator(mode="after")
    def _regex_compiles(self) -> EventMatch:
        if self.url_regex is not None:
            try:
                re.compile(self.url_regex)
            except re.error as exc:
                raise ValueError(f"url_regex does not compile: {exc}") from None
        if isinstance(self.name, list) and not self.name:
            raise ValueError("name: an empty list matches nothing; leave it out for any name")
        return self


class EngagementRule(_Model):
    """Points for an event (page view, e-mail open, download...), optionally capped."""

    id: RuleId
    description: str = ""
    match: EventMatch
    points: int
    cap: Cap | None = None
    trigger: Trigger | None = None


class FitRule(_Model):
    """Points for who the lead is; the fit score is recomputed from the latest traits."""

    id: RuleId
    description: str = ""
    when: TraitCondition
    points: int


class Count(_Model):
    """Award once `at_least` matching events fall within `within` of each other."""

    at_least: int = Field(ge=1)
    within: Duration


class ProductRule(_Model):
    """Product usage (PQL signals): per event points, or once when a count is reached."""

    id: RuleId
    description: str = ""
    match: EventMatch
    points: int
    count: Count | None = None
    cap: Cap | None = None
    trigger: Trigger | None = None

    @model_validator(mode="after")
    def _count_or_cap(self) -> ProductRule:
        if self.count is not None and self.cap is not None:
            raise ValueError("a counted rule scores once per lead; a cap makes no sense here")
        return self


class NegativeRule(_Model):
    """Negative points: on an event (`match`, engagement group) or a trait (`when`, fit)."""

    id: RuleId
    description: str = ""
    points: int = Field(lt=0)
    match: EventMatch | None = None
    when: TraitCondition | None = None
    cap: Cap | None = None
    disqualify: bool = Field(
        default=False, description="A hit also moves the lead to disqualified (rule as cause).")

    @model_validator(mode="after")
    def _one_kind(self) -> NegativeRule:
        if (self.match is None) == (self.when is None):
            raise ValueError("a negative rule has exactly one of match (an event) or when "
                             "(a trait)")
        if self.cap is not None and self.when is not None:
            raise ValueError("cap only applies to event rules (match)")
        return self


class PerPeriod(_Model):
    """Linear decay: lose `points` per full `period` of inactivity."""

    points: float = Field(gt=0)
    period: Duration


class Decay(_Model):
    """Decay on inactivity, from event time only; it never raises a score, fit never decays."""

    idle_after: Duration = parse_duration("14d")
    half_life: Duration | None = None
    points_per_period: PerPeriod | None = None
    groups: list[Literal["engagement", "product"]] = ["engagement", "product"]

    @model_validator(mode="after")
    def _one_kind(self) -> Decay:
        if (self.half_life is None) == (self.points_per_period is None):
            raise ValueError("decay needs exactly one of half_life or points_per_period")
        return self


class Group(_Model):
    """How one group counts in the total: weight and an optional cap on its contribution."""

    weight: float = Field(default=1.0, ge=0)
    max: float | None = Field(default=None, gt=0)


class Groups(_Model):
    """The three score groups."""

    fit: Group = Group()
    engagement: Group = Group()
    product: Group = Group()


class Thresholds(_Model):
    """Score lines tied to sales capacity.

    `mql` and `hot` are lines on the total; `cool_below` is where a hot lead cools again
    (hysteresis: a lead at the hot line does not flap); `recycle` is a line on *activity*
    (engagement and product, without fit): who the lead is never keeps it from being
    recycled; `pql` is a line on the product group.
    """

    mql: float
    hot: float
    recycle: float
    pql: float
    cool_below: float | None = Field(
        default=None, description="A hot lead cools below this total; default hot - 10.")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.recycle < self.mql <= self.hot:
            raise ValueError("thresholds must satisfy recycle < mql <= hot")
        if self.cool_below is not None and not self.cool_below <= self.hot:
            raise ValueError("cool_below must not be above hot")
        return self

    def cooling_line(self) -> float:
        """The total below which a hot lead is no longer hot."""
        return self.hot - 10 if self.cool_below is None else self.cool_below


class Alerts(_Model):
    """Alert behaviour: no repeat for a lead within `cooldown` unless a new trigger rule;
    `require`: what every lead must meet for its alert to reach a team (else: review)."""

    cooldown: Duration = parse_duration("24h")
    require: Requirement | None = None


class Qualification(_Model):
    """What sales must record for a move: the SQL criteria and the rejection reasons."""

    framework: str = Field(default="BANT", description="Name shown in refusals, e.g. BANT.")
    sql_requires: list[str] = Field(
        default=[], description="Properties of \"Lead Qualified\" that must be present and "
        "not empty/false (e.g. budget, authority, need, timeline).")
    rejection_reasons: list[str] = Field(
        default=[], description="Reasons of \"Lead Rejected\" counted by name in metrics; "
        "any other reason is counted as other.")


ChannelName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
_CHANNEL_FIELDS = ("source", "medium", "campaign", "referrer", "direct")


class ChannelMatch(_Model):
    """One way to recognise a channel; every field given must hold. Values are globs on
    the touch's fields, any case (`*google*`, `cpc`); `referrer` globs the referring host."""

    source: list[str] | None = Field(default=None, description="utm_source / campaign source.")
    medium: list[str] | None = Field(default=None, description="utm_medium / campaign medium.")
    campaign: list[str] | None = Field(default=None, description="utm_campaign / campaign name.")
    referrer: list[str] | None = Field(default=None, description="The referring host.")
    direct: bool | None = Field(
        default=None, description="true: nothing names the origin (a direct visit).")

    @model_validator(mode="after")
    def _something(self) -> ChannelMatch:
        given = [k for k in _CHANNEL_FIELDS if getattr(self, k) is not None]
        if not given:
            raise ValueError("a channel match needs at least one of " + ", ".join(_CHANNEL_FIELDS))
        empty = [k for k in given if getattr(self, k) == []]
        if empty:
            raise ValueError(f"{', '.join(empty)}: an empty list matches nothing")
        return self


class ChannelRule(_Model):
    """A marketing channel: the first channel (in file order) one of whose matches holds
    classifies a touch; a touch no channel matches is `other`."""

    id: ChannelName
    description: str = ""
    match: list[ChannelMatch] = Field(min_length=1)


class AttributionSettings(_Model):
    """Which attribution models each attribution message carries."""

    models: list[Model] = Field(default=list(MODELS), min_length=1)


class RulesFile(_Model):
    """The whole rules file (top level). New sections are added here as optional fields."""

    version: Literal[1] = 1
    #: Orders published rules (`leadflow rules publish` refuses one below the topic's):
    #: the content hash in `rules_version` says which rules, not which came later.
    revision: int = Field(default=0, ge=0)
    description: str = ""
    groups: Groups = Groups()
    thresholds: Thresholds
    alerts: Alerts = Alerts()
    qualification: Qualification = Qualification()
    decay: Decay | None = None
    free_email_domains: list[str] = []
    engagement: list[EngagementRule] = []
    fit: list[FitRule] = []
    product: list[ProductRule] = []
    negative: list[NegativeRule] = []
    # Teams, reps and SLAs (pipeline.core.routing). Without it every hot lead goes to one
    # catch-all team, "sales", with no named reps.
    routing: RoutingRules = DEFAULT_ROUTING
    # Marketing channels that touches are classified into, and the attribution models.
    channels: list[ChannelRule] = []
    attribution: AttributionSettings = AttributionSettings()


# -- compiled form -----------------------------------------------------------------------

FIT, ENGAGEMENT, PRODUCT = 0, 1, 2
_CACHE_MAX = 100_000
_MEMO_MAX = 10_000  # remembered values per trait rule
GROUP_NAMES: tuple[str, str, str] = ("fit", "engagement", "product")


@dataclass(frozen=True, slots=True)
class CompiledEventRule:
    """An event rule ready for the hot path; `check` is None when the key match suffices."""

    id: str
    group: int  # ENGAGEMENT or PRODUCT
    points: int
    check: Callable[[Event], bool] | None
    cap_points: int = 0  # 0: no cap
    cap_window_ms: int = 0
    count_at_least: int = 0  # 0: not a counted rule
    count_within_ms: int = 0
    trigger_stage: str | None = None
    trigger_hot: bool = False
    url_only: bool = False  # `check` reads nothing but the URL: its result can be cached
    order: int = 0  # position in the file: the first matching trigger wins
    disqualify: bool = False  # a match moves the lead to disqualified
    require: CompiledRequirement | None = None  # a trigger's own conditions


# A match cache entry: (rules decided by (type, name, url) alone, (rule, check) pairs).
_MatchEntry = tuple[tuple[CompiledEventRule, ...],
                    tuple[tuple[CompiledEventRule, Callable[[Event], bool]], ...]]


@dataclass(frozen=True, slots=True)
class CompiledTraitRule:
    """A fit or negative trait rule: a predicate on the merged traits."""

    id: str
    points: int
    test: Callable[[Mapping[str, Any]], bool]
    disqualify: bool = False


@dataclass(frozen=True, slots=True)
class CompiledRequirement:
    """A `Requirement` ready to test against a lead's fit and traits."""

    min_fit: float | None
    none_of: frozenset[str]
    traits: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...]  # (description, test)

    def failure(self, fit: float, fit_hits: tuple[tuple[str, int], ...],
                traits: Mapping[str, Any]) -> str | None:
        """Why a lead fails this requirement, or None when it meets it."""
        hit = sorted(rid for rid, _ in fit_hits if rid in self.none_of)
        if hit:
            return "outside the ICP: " + ", ".join(hit)
        if self.min_fit is not None and fit < self.min_fit:
            return f"fit {fit:g} is below the required {self.min_fit:g}"
        for desc, test in self.traits:
            if not test(traits):
                return f"trait condition not met: {desc}"
        return None


@dataclass(frozen=True, slots=True)
class CompiledDecay:
    """Decay parameters in milliseconds; exactly one of half_life_ms / period_ms is set."""

    idle_after_ms: int
    half_life_ms: int = 0
    period_ms: int = 0
    period_points: float = 0.0
    engagement: bool = True
    product: bool = True


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """Everything the engine needs, indexed for one dict lookup per event."""

    model: RulesFile
    by_key: Mapping[tuple[str, str], tuple[CompiledEventRule, ...]]
    by_type: Mapping[str, tuple[CompiledEventRule, ...]]  # rules matching any name
    traits: tuple[CompiledTraitRule, ...]
    weights: tuple[float, float, float]
    maxes: tuple[float, float, float]
    mql: float
    hot: float
    recycle: float
    pql: float
    cooldown_ms: int
    decay: CompiledDecay | None
    rule_groups: Mapping[str, str] = field(default_factory=dict)  # rule id -> group name
    routing: RoutingRules = DEFAULT_ROUTING
    cool: float = -math.inf  # a hot lead cools below this total
    alert_require: CompiledRequirement | None = None
    free_email: frozenset[str] = frozenset()
    sql_requires: tuple[str, ...] = ()
    framework: str = "BANT"
    rejection_reasons: frozenset[str] = frozenset()
    #: What every decision names as the rules that made it (`rules_version`).
    version: str = ""
    # (type, name, url) -> (rules decided by the key and URL alone, (rule, its check) for the
    # rules to check per event). A cache only: bounded, never changes a result. The engine's
    # hot loop reads it directly and calls `match` on a miss or when a check holds.
    _cache: dict[tuple[str, str, str], _MatchEntry] = field(
        default_factory=dict, compare=False, repr=False)
    channels: tuple[Channel, ...] = ()
    attribution_models: tuple[str, ...] = MODELS
    # touch fields -> channel: a cache only, like `_cache` (pipeline.core.touches.extract)
    _touch_cache: dict[TouchFields, str] = field(default_factory=dict, compare=False,
                                                 repr=False)

    def channel_names(self) -> tuple[str, ...]:
        """Every channel a touch can get: the rules' channels and `other` (metric labels)."""
        return (*(c.name for c in self.channels), OTHER)

    def teams(self) -> list[str]:
        """Names of the routing teams, in match order (each has a routing.<team> topic)."""
        return [t.name for t in self.routing.teams]

    def lookup(self, type_: str, name: str) -> tuple[CompiledEventRule, ...]:
        """The candidate rules for an event: exact (type, name) rules plus any-name rules."""
        hit = self.by_key.get((type_, name))
        if hit is not None:
            return hit  # already includes the any-name rules of this type
        return self.by_type.get(type_, ())

    def match_entry(self, e: Event) -> _MatchEntry:
        """The cache entry for the event's (type, name, url), made on a miss.

        The rules in `fixed` match whatever the rest of the event; each rule in `dynamic`
        matches when its check holds too. `match` combines them in file order.
        """
        key = (e.type, e.name, e.url)
        hit = self._cache.get(key)
        if hit is None:
            cands = self.lookup(e.type, e.name)
            hit = (tuple(c for c in cands if c.check is None or (c.url_only and c.check(e))),
                   tuple((c, c.check) for c in cands if c.check is not None and not c.url_only))
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()  # crude but bounded; URLs are few in practice
            self._cache[key] = hit
        return hit

    def match(self, e: Event) -> tuple[CompiledEventRule, ...]:
        """The rules an event matches, all conditions checked, in file order."""
        hit = self._cache.get((e.type, e.name, e.url))
        fixed, dynamic = hit if hit is not None else self.match_entry(e)
        if not dynamic:
            return fixed
        more = [c for c, check in dynamic if check(e)]
        if not more:
            return fixed
        return tuple(sorted((*fixed, *more), key=lambda c: c.order))

    def total(self, fit: float, engagement: float, product: float) -> float:
        """The combined score: weighted groups, each capped at its max."""
        w, m = self.weights, self.maxes
        # conditional expressions: measurably cheaper than min() on the hot path
        return (w[0] * (fit if fit < m[0] else m[0])
                + w[1] * (engagement if engagement < m[1] else m[1])
                + w[2] * (product if product < m[2] else m[2]))

    def activity(self, engagement: float, product: float) -> float:
        """What the lead did, without who it is: the total less fit (the recycle line's score)."""
        w, m = self.weights, self.maxes
        return (w[1] * (engagement if engagement < m[1] else m[1])
                + w[2] * (product if product < m[2] else m[2]))

    def summary(self) -> dict[str, Any]:
        """Counts per section and the thresholds, for `leadflow rules check`."""
        md = self.model
        return {
            "engagement": len(md.engagement),
            "fit": len(md.fit),
            "product": len(md.product),
            "negative": len(md.negative),
            "thresholds": md.thresholds.model_dump(),
            "cooldown_ms": self.cooldown_ms,
            "decay": None if md.decay is None else (
                "half_life" if md.decay.half_life is not None else "points_per_period"),
            "triggers": sorted([r.id for r in md.engagement if r.trigger is not None]
                               + [r.id for r in md.product if r.trigger is not None]),
            "channels": [c.name for c in self.channels],
        }


def _lower(v: Any) -> str:
    return v.lower() if isinstance(v, str) else str(v).lower()


def _compile_glob(pattern: str) -> Callable[[Event], bool]:
    """A case-insensitive URL glob; ``*literal*`` (the common case) is a substring test."""
    core = pattern.strip("*")
    if pattern.startswith("*") and pattern.endswith("*") and core and not any(
            c in core for c in "*?[]"):
        low = core.lower()
        # URLs are mostly lower case already: try the cheap test before lower-casing
        return lambda e: low in e.url or low in e.url.lower()
    glob = re.compile(fnmatch.translate(pattern), re.IGNORECASE)
    return lambda e: glob.match(e.url) is not None


def _compile_match(m: EventMatch) -> Callable[[Event], bool] | None:
    """One predicate for the conditions beyond (type, name); None if there are none."""
    checks: list[Callable[[Event], bool]] = []
    if m.source is not None:
        src = m.source
        checks.append(lambda e: e.source == src)
    if m.properties and len(m.properties) == 1:
        ((pk, pv),) = m.properties.items()
        checks.append(lambda e: pk in e.properties and e.properties[pk] == pv)
    elif m.properties:
        props = tuple(m.properties.items())
        checks.append(lambda e: all(k in e.properties and e.properties[k] == v
                                    for k, v in props))
    if m.properties_contains:
        pc = tuple((k, v.lower()) for k, v in m.properties_contains.items())
        checks.append(lambda e: all(k in e.properties and v in _lower(e.properties[k])
                                    for k, v in pc))
    if m.url is not None:
        checks.append(_compile_glob(m.url))
    if m.url_regex is not None:
        rx = re.compile(m.url_regex, re.IGNORECASE)
        checks.append(lambda e: rx.search(e.url) is not None)
    if m.utm and len(m.utm) == 1:
        ((uk, uv),) = ((k, v.lower()) for k, v in m.utm.items())
        checks.append(lambda e: uk in e.utm and _lower(e.utm[uk]) == uv)
    elif m.utm:
        utm = tuple((k, v.lower()) for k, v in m.utm.items())
        checks.append(lambda e: bool(e.utm) and all(_lower(e.utm.get(k, "")) == v
                                                    for k, v in utm))
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    tup = tuple(checks)
    return lambda e: all(c(e) for c in tup)


def trait_value(traits: Mapping[str, Any], path: str) -> Any:
    """A trait by dotted path (``company.employees``), or None."""
    if "." not in path:
        return traits.get(path)
    cur: Any = traits
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def first_trait(traits: Mapping[str, Any], paths: tuple[str, ...]) -> Any:
    """The value of the first of `paths` present in `traits`, or None."""
    for path in paths:
        v = trait_value(traits, path)
        if v is not None:
            return v
    return None


def email_domain(value: Any) -> str | None:
    """The lower-case domain of an e-mail address (or of a bare domain), or None."""
    if not isinstance(value, str) or not value:
        return None
    dom = value.rsplit("@", 1)[-1].strip().lower()
    return dom or None


def _value_test(c: TraitCondition, free: frozenset[str]) -> Callable[[Any], bool]:
    """The condition's test on the trait's value (None: the trait is missing)."""
    if c.contains_any is not None:
        # word-ish match: "vp" must not match "mvp"; a keyword may hold spaces ("head of")
        rx = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in c.contains_any) + r")\b",
                        re.IGNORECASE)
        return lambda v: v is not None and rx.search(str(v)) is not None
    if c.any_of is not None:
        vals = frozenset(x.lower() for x in c.any_of)
        return lambda v: v is not None and _lower(v) in vals
    if c.range is not None:
        lo = -math.inf if c.range.min is None else c.range.min
        hi = math.inf if c.range.max is None else c.range.max

        def in_range(v: Any) -> bool:
            if isinstance(v, bool) or v is None:
                return False
            try:
                x = float(v)
            except (TypeError, ValueError):
                return False
            return lo <= x <= hi

        return in_range
    if c.free_email is not None:
        want = c.free_email
        return lambda v: (d := email_domain(v)) is not None and ((d in free) == want)
    if c.domain_in is not None:
        doms = frozenset(x.lower() for x in c.domain_in)
        return lambda v: email_domain(v) in doms
    suffixes = tuple(x.lower() for x in c.domain_endswith or ())
    return lambda v: (d := email_domain(v)) is not None and d.endswith(suffixes)


def _compile_trait(c: TraitCondition, free: frozenset[str]) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate on the merged traits, memoised by value.

    Fit is recomputed on every identify and titles, company sizes and countries repeat
    across leads, while a title test is a regex search: remember the answer per value.
    Only str and int values are remembered (hashable, and no str or int equals a value of
    the other type; bool, which equals 0 and 1, is left out), so a hit is always exact.
    """
    paths = c.paths()
    path = paths[0]
    test = _value_test(c, free)
    memo: dict[str | int, bool] = {}

    def memoised(t: Mapping[str, Any]) -> bool:
        v = trait_value(t, path) if len(paths) == 1 else first_trait(t, paths)
        tv = type(v)
        if tv is not str and tv is not int:
            return test(v)
        hit = memo.get(v)
        if hit is None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()  # bounded: crude, a cache only
            hit = memo[v] = test(v)
        return hit

    return memoised


def _describe(c: TraitCondition) -> str:
    """A condition in a line, for review reasons (names the test, never a lead's value)."""
    test = next(k for k in _TRAIT_TESTS if getattr(c, k) is not None)
    return f"{'|'.join(c.paths())} {test} {getattr(c, test)!s}"


def _requirement(req: Requirement | None, free: frozenset[str]) -> CompiledRequirement | None:
    if req is None:
        return None
    return CompiledRequirement(
        min_fit=req.min_fit, none_of=frozenset(req.none_of),
        traits=tuple((_describe(c), _compile_trait(c, free)) for c in req.traits))


def _event_rule(rid: str, group: int, m: EventMatch, points: int, cap: Cap | None,
                count: Count | None, trigger: Trigger | None, free: frozenset[str],
                disqualify: bool = False) -> CompiledEventRule:
    url_only = (m.url is not None or m.url_regex is not None) and not (
        m.source is not None or m.properties or m.properties_contains or m.utm)
    return CompiledEventRule(
        disqualify=disqualify,
        require=_requirement(trigger.require, free) if trigger else None,
        url_only=url_only,
        id=rid, group=group, points=points, check=_compile_match(m),
        cap_points=cap.points if cap else 0, cap_window_ms=cap.window if cap else 0,
        count_at_least=count.at_least if count else 0,
        count_within_ms=count.within if count else 0,
        trigger_stage=trigger.stage if trigger else None,
        trigger_hot=trigger.hot if trigger else False,
    )



def rules_version(model: RulesFile) -> str:
    """`<format version>-<12 hex digits>`: a SHA-256 of the validated rules in canonical JSON,
    so that comments, layout and key order do not change it and any rule or setting does."""
    import orjson

    def canon(v: Any) -> Any:  # sets come out in hash order, which differs per process
        if isinstance(v, set | frozenset):
            return sorted((canon(x) for x in v), key=repr)
        if isinstance(v, dict):
            return {k: canon(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [canon(x) for x in v]
        return v

    canonical = orjson.dumps(canon(model.model_dump()), option=orjson.OPT_SORT_KEYS)
    return f"{model.version}-{hashlib.sha256(canonical).hexdigest()[:12]}"


def _channel_pattern(m: ChannelMatch) -> ChannelPattern:
    def low(v: list[str] | None) -> tuple[str, ...] | None:
        return None if v is None else tuple(x.lower() for x in v)
    return ChannelPattern(low(m.source), low(m.medium), low(m.campaign), low(m.referrer),
                          m.direct)


def compile_rules(model: RulesFile) -> CompiledRules:
    """Index and precompile a validated rules model."""
    free = frozenset(d.lower() for d in model.free_email_domains)
    items: list[tuple[EventMatch, CompiledEventRule]] = []
    for er in model.engagement:
        items.append((er.match, _event_rule(er.id, ENGAGEMENT, er.match, er.points, er.cap,
                                            None, er.trigger, free)))
    for pr in model.product:
        items.append((pr.match, _event_rule(pr.id, PRODUCT, pr.match, pr.points, pr.cap,
                                            pr.count, pr.trigger, free)))
    traits: list[CompiledTraitRule] = [
        CompiledTraitRule(f.id, f.points, _compile_trait(f.when, free)) for f in model.fit]
    for nr in model.negative:
        if nr.match is not None:
            items.append((nr.match, _event_rule(nr.id, ENGAGEMENT, nr.match, nr.points, nr.cap,
                                                None, None, free, nr.disqualify)))
        elif nr.when is not None:
            traits.append(CompiledTraitRule(nr.id, nr.points, _compile_trait(nr.when, free),
                                            nr.disqualify))
    # Rules keep file order within a key so that the first trigger in the file wins.
    by_key: dict[tuple[str, str], list[tuple[int, CompiledEventRule]]] = {}
    by_type: dict[str, list[tuple[int, CompiledEventRule]]] = {}
    items = [(m, replace(r, order=i)) for i, (m, r) in enumerate(items)]
    for i, (m, r) in enumerate(items):
        if m.name is None:
            by_type.setdefault(m.type, []).append((i, r))
        else:
            for n in [m.name] if isinstance(m.name, str) else m.name:
                by_key.setdefault((m.type, n), []).append((i, r))
    merged = {k: tuple(r for _, r in sorted([*v, *by_type.get(k[0], [])], key=lambda x: x[0]))
              for k, v in by_key.items()}
    g = model.groups
    d = model.decay
    cdecay = None if d is None else CompiledDecay(
        idle_after_ms=d.idle_after,
        half_life_ms=d.half_life or 0,
        period_ms=d.points_per_period.period if d.points_per_period else 0,
        period_points=d.points_per_period.points if d.points_per_period else 0.0,
        engagement="engagement" in d.groups,
        product="product" in d.groups,
    )
    inf = math.inf
    return CompiledRules(
        model=model,
        by_key=merged,
        by_type={k: tuple(r for _, r in v) for k, v in by_type.items()},
        traits=tuple(traits),
        weights=(g.fit.weight, g.engagement.weight, g.product.weight),
        maxes=(g.fit.max or inf, g.engagement.max or inf, g.product.max or inf),
        mql=model.thresholds.mql, hot=model.thresholds.hot,
        recycle=model.thresholds.recycle, pql=model.thresholds.pql,
        cooldown_ms=model.alerts.cooldown,
        decay=cdecay,
        routing=model.routing,
        cool=model.thresholds.cooling_line(),
        alert_require=_requirement(model.alerts.require, free),
        free_email=free,
        sql_requires=tuple(model.qualification.sql_requires),
        framework=model.qualification.framework,
        rejection_reasons=frozenset(model.qualification.rejection_reasons),
        version=rules_version(model),
        channels=tuple(Channel(c.id, tuple(_channel_pattern(m) for m in c.match))
                       for c in model.channels),
        attribution_models=tuple(dict.fromkeys(model.attribution.models)),
        rule_groups={**{r.id: GROUP_NAMES[r.group] for _, r in items},
                     **{t.id: "fit" for t in traits}},
    )


# -- loading with line numbers -----------------------------------------------------------


def _line_of(doc: Any, loc: tuple[int | str, ...]) -> tuple[int | None, list[int | str]]:
    """The 1-based line of the deepest node of `loc` present in the YAML, and its path.

    Pydantic adds locations that are not in the file (union member names, validator
    tags); those are skipped. A missing key is kept in the path, with its parent's line.
    """
    line: int | None = None
    path: list[int | str] = []
    cur: Any = doc
    for i, part in enumerate(loc):
        if isinstance(cur, CommentedMap) and part in cur:
            line = cur.lc.key(part)[0] + 1
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, CommentedSeq) and isinstance(part, int) and 0 <= part < len(cur):
            line = cur.lc.item(part)[0] + 1
            path.append(part)
            cur = cur[part]
        elif i == len(loc) - 1 and isinstance(cur, CommentedMap) and isinstance(part, str):
            path.append(part)  # a missing field: named, at its parent's line
        else:
            continue
    if line is None and isinstance(doc, CommentedMap):
        line = doc.lc.line + 1
    return line, path


#: Top-level lists whose items are rules with an `id`: errors inside one name the rule too.
RULE_SECTIONS = ("engagement", "fit", "product", "negative", "channels")


def _fmt_path(path: list[int | str], doc: Any = None) -> str:
    out = ""
    for i, p in enumerate(path):
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        # "engagement[13]" alone sends the reader counting list items; the id is what
        # they search for.
        if i == 1 and isinstance(p, int) and path[0] in RULE_SECTIONS:
            rid = _rule_id(doc, str(path[0]), p)
            if rid is not None:
                out += f" (id: {rid})"
    return out or "(top level)"


def _rule_id(doc: Any, section: str, index: int) -> str | None:
    rules = doc.get(section) if isinstance(doc, Mapping) else None
    if isinstance(rules, list) and 0 <= index < len(rules) and isinstance(rules[index], Mapping):
        rid = rules[index].get("id")
        return rid if isinstance(rid, str) and rid else None
    return None


def _problem(source: str, doc: Any, loc: tuple[int | str, ...], msg: str) -> tuple[int, str]:
    """(line, the problem's line of text) for one location in the file."""
    line, path = _line_of(doc, loc)
    where = f"{source}:{line}" if line is not None else source
    return line or 0, f"{where} {_fmt_path(path, doc)}: {msg}"


def _expand(tp: Any) -> list[Any]:
    """The concrete types behind Optional, unions and Annotated."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _expand(get_args(tp)[0])
    if origin in (Union, UnionType):
        return [t for a in get_args(tp) for t in _expand(a)]
    return [tp]


def _known_keys(loc: tuple[int | str, ...]) -> set[str]:
    """The field names the models allow at `loc` (a mapping's location in the file)."""
    types: list[Any] = [RulesFile]
    for part in loc:
        found: list[Any] = []
        for tp in (t for ty in types for t in _expand(ty)):
            origin, args = get_origin(tp), get_args(tp)
            if isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
                if part in tp.model_fields:
                    found.append(tp.model_fields[part].annotation)
            elif isinstance(part, int) and origin in (list, tuple) and args:
                found.append(args[0])
            elif isinstance(part, str) and origin in (dict, Mapping) and len(args) == 2:
                found.append(args[1])
        if found:  # else: a union member's tag pydantic put in the location; skip it
            types = found
    return {name for ty in types for t in _expand(ty)
            if isinstance(t, type) and issubclass(t, BaseModel) for name in t.model_fields}


def _node(doc: Any, path: list[int | str]) -> Any:
    for part in path:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def _validation_problems(source: str, doc: Any, exc: ValidationError) -> list[str]:
    """Every error pydantic found, one line each, in file order.

    A misspelt key (`pionts`) gets "did you mean 'points'?", and the "Field required" for
    the key it meant is left out: the misspelling already explains it.
    """
    errors = exc.errors(include_url=False)
    meant: set[tuple[str, str]] = set()  # (the mapping's path, the field a typo meant)
    notes: dict[int, str] = {}
    for n, err in enumerate(errors):
        loc = tuple(err["loc"])
        if err["type"] != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
            continue
        parent_path = _line_of(doc, loc)[1][:-1]
        parent = _fmt_path(parent_path)
        # A key that is already there is not what the typo meant.
        candidates = _known_keys(loc[:-1]) - set(_node(doc, parent_path) or ())
        close = difflib.get_close_matches(loc[-1], sorted(candidates), n=1)
        if close:
            notes[n] = f"unknown key {loc[-1]!r}: did you mean {close[0]!r}?"
            meant.add((parent, close[0]))
        else:
            known = ", ".join(sorted(_known_keys(loc[:-1])))
            notes[n] = f"unknown key {loc[-1]!r}" + (f" (known: {known})" if known else "")
    out: list[tuple[int, str]] = []
    for n, err in enumerate(errors):
        loc = tuple(err["loc"])
        if err["type"] == "missing":
            path = _line_of(doc, loc)[1]
            if path and (_fmt_path(path[:-1]), path[-1]) in meant:
                continue
        msg = notes.get(n) or err["msg"].removeprefix("Value error, ")
        problem = _problem(source, doc, loc, msg)
        if problem not in out:  # union members can repeat one error
            out.append(problem)
    return [text for _, text in sorted(out, key=lambda p: p[0])]


def _check_ids(source: str, doc: Any, model: RulesFile) -> list[str]:
    seen: dict[str, str] = {}
    problems: list[str] = []
    sections: list[tuple[str, list[Any]]] = [
        ("engagement", list(model.engagement)), ("fit", list(model.fit)),
        ("product", list(model.product)), ("negative", list(model.negative))]
    for sec, rules in sections:
        for i, r in enumerate(rules):
            if r.id in seen:
                problems.append(_problem(source, doc, (sec, i, "id"),
                                         f"duplicate rule id {r.id!r} (first used in "
                                         f"{seen[r.id]})")[1])
            else:
                seen[r.id] = f"{sec}[{i}]"
    channels: dict[str, int] = {}
    for i, c in enumerate(model.channels):
        if c.id == OTHER:
            problems.append(_problem(source, doc, ("channels", i, "id"),
                                     f"{OTHER!r} is the channel of touches no channel "
                                     "matches; name this channel otherwise")[1])
        elif c.id in channels:
            problems.append(_problem(source, doc, ("channels", i, "id"),
                                     f"duplicate channel {c.id!r} (first used in "
                                     f"channels[{channels[c.id]}])")[1])
        else:
            channels[c.id] = i
    return problems


#: Segment's reserved identify traits (spec: identify, traits), with the company and address
#: objects' fields: a condition may read these, and any trait a fit or negative rule reads.
SPEC_TRAITS = frozenset({
    "address", "age", "avatar", "birthday", "company", "createdAt", "description", "email",
    "firstName", "gender", "id", "lastName", "name", "phone", "title", "username", "website",
    "company.name", "company.id", "company.industry", "company.employee_count", "company.plan",
    "address.city", "address.country", "address.postalCode", "address.state", "address.street",
})


def _requirements(model: RulesFile) -> list[tuple[tuple[int | str, ...], Requirement]]:
    """Every requirement in the file with its location."""
    out: list[tuple[tuple[int | str, ...], Requirement]] = []
    if model.alerts.require is not None:
        out.append((("alerts", "require"), model.alerts.require))
    triggers: list[tuple[str, int, Trigger | None]] = [
        *(("engagement", i, r.trigger) for i, r in enumerate(model.engagement)),
        *(("product", i, r.trigger) for i, r in enumerate(model.product))]
    for sec, i, trig in triggers:
        if trig is not None and trig.require is not None:
            out.append(((sec, i, "trigger", "require"), trig.require))
    return out


def fit_ceiling(model: RulesFile) -> float:
    """The most a lead's fit can add to the total: weighted, capped, all positive rules."""
    top = float(sum(f.points for f in model.fit if f.points > 0))
    g = model.groups.fit
    return g.weight * (min(top, g.max) if g.max is not None else top)


def _check_consistency(source: str, doc: Any, model: RulesFile) -> list[str]:
    """Settings that validate one by one but contradict each other."""
    problems: list[str] = []

    def problem(loc: tuple[int | str, ...], msg: str) -> None:
        problems.append(_problem(source, doc, loc, msg)[1])

    trait_rules = {r.id for r in model.fit} | {r.id for r in model.negative if r.when}
    known = set(SPEC_TRAITS)
    conds = [f.when for f in model.fit] + [n.when for n in model.negative if n.when is not None]
    for cond in conds:
        known.update(cond.paths())
    for loc, req in _requirements(model):
        for j, rid in enumerate(req.none_of):
            if rid not in trait_rules:
                problem((*loc, "none_of", j),
                        f"{rid!r} is not a fit or negative trait rule (none_of names "
                        "rules on who the lead is)")
        for j, cond in enumerate(req.traits):
            for path in cond.paths():
                if path not in known:
                    problem((*loc, "traits", j, "trait"),
                            f"unknown trait {path!r}: neither a Segment spec trait nor "
                            "read by a fit or negative rule (a misspelling?)")
    fit = fit_ceiling(model)
    th = model.thresholds
    if fit >= th.cooling_line():
        problem(("groups", "fit"),
                f"fit alone can reach {fit:g}, at or above the line where a hot lead cools "
                f"({th.cooling_line():g}): such a lead would stay hot forever; cap fit "
                "(groups.fit.max) below it")
    elif fit >= th.mql:  # the cooling line is above mql: that one already says this
        problem(("groups", "fit"),
                f"fit alone can reach {fit:g}, at or above thresholds.mql ({th.mql:g}): a "
                "profile with no activity would be an MQL; cap fit (groups.fit.max) "
                "below it")
    return problems


def parse_rules(text: str, source: str = "rules.yaml") -> CompiledRules:
    """Validate and compile rules from YAML text; `source` names the file in errors."""
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise RulesError(f"{where} (YAML): {problem}") from None
    except YAMLError as exc:
        raise RulesError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(doc, CommentedMap):
        raise RulesError(f"{source}:1 (top level): the rules file must be a mapping")
    try:
        model = RulesFile.model_validate(doc)
    except ValidationError as exc:
        raise RulesError.of(_validation_problems(source, doc, exc)) from None
    problems = _check_ids(source, doc, model) + _check_consistency(source, doc, model)
    if problems:
        raise RulesError.of(problems)
    return compile_rules(model)


def load_rules(path: str | Path) -> CompiledRules:
    """Read, validate and compile a rules file; any problem is a RulesError naming the line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{p}: cannot read rules file: {exc}") from None
    return parse_rules(text, str(p))


def default_rules_text() -> str:
    """The text of the shipped default rules file."""
    return resources.files("pipeline").joinpath("rules", "default.yaml").read_text("utf-8")


def load_default_rules() -> CompiledRules:
    """The shipped default rules (pipeline/rules/default.yaml)."""
    return parse_rules(default_rules_text(), "default.yaml")
