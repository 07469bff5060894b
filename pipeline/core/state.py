"""A lead's state between events: frozen, bounded, and JSON-friendly for the Faust table.

Memory is bounded per lead whatever its activity: cap windows keep the last
`MAX_CAP_WINDOWS` windows per rule, counted product rules keep their last `MAX_COUNT_TIMES`
event times (more if the rule counts more), dedup keeps the last `MAX_SEEN` message ids,
the breakdown keeps one entry per rule (rules are finite) and the last `MAX_RECENT`
scoring events, the score ledger the last `MAX_CHANGES` score changes.

The mapping fields hold plain dicts for speed; treat them as read-only (the engine copies
before it writes, so a LeadState is never changed after it is made).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from pipeline.core.outputs import ScoreChange
from pipeline.core.touches import Touch

MAX_SEEN = 64
MAX_RECENT = 10
#: Score changes a lead keeps for `GET /leads/{id}/history` (with the ledger on).
MAX_CHANGES = 20
MAX_CAP_WINDOWS = 8
# Event times a counted rule remembers: a late event is counted with these, not only with
# those inside the window of the newest.
MAX_COUNT_TIMES = 16

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class LeadState:
    """Everything the core knows about one lead.

    Scores per group are as of `score_ms` (event time up to which decay was applied).
    `caps` is rule id -> ((window index, |points| awarded in that window), ...), oldest
    first; `counts` is counted rule id -> its last event times, oldest first;
    `achieved` the counted rules already awarded. `contributions` is rule id ->
    (points, count, last message id, last event ms); `recent` the last scoring events as
    (rule id, message id, points, event ms). `traits` is trait -> (value, event ms): the
    latest value by event time, so fit does not depend on arrival order.
    """

    lead_id: str
    stage: str = "visitor"
    stage_since_ms: int | None = None
    fit: float = 0.0
    engagement: float = 0.0
    product: float = 0.0
    score_ms: int | None = None
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    traits: Mapping[str, tuple[Any, int]] = field(default_factory=_empty)
    fit_hits: tuple[tuple[str, int], ...] = ()
    caps: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=_empty)
    counts: Mapping[str, tuple[int, ...]] = field(default_factory=_empty)
    achieved: frozenset[str] = frozenset()
    seen: Mapping[str, int] = field(default_factory=_empty)
    contributions: Mapping[str, tuple[float, int, str, int]] = field(default_factory=_empty)
    recent: tuple[tuple[str, str, float, int], ...] = ()
    hot: bool = False
    last_alert_ms: int | None = None
    alert_rules: tuple[str, ...] = ()
    owner: str | None = None  # written back by the assign step (`with_owner`)
    team: str | None = None  # the owner's team, written back with it
    last_alert_id: str | None = None  # the lead's latest alert: a later hand-raise updates it
    rejection: str | None = None  # the reason sales gave with the latest "Lead Rejected"
    #: The rules version `fit` was computed under (None: before versions were kept); the
    #: engine recomputes fit from `traits` when it sees the lead under other rules.
    fit_rules: str | None = None
    touches: tuple[Touch, ...] = ()  # the marketing journey, bounded (pipeline.core.touches)
    nurture: str | None = None  # why the lead is in a nurture track; None: it is not
    opted_out: bool = False  # the lead unsubscribed: never enrolled in nurture again
    #: The latest score changes, oldest first (kept only with the ledger on).
    changes: tuple[ScoreChange, ...] = ()
    #: Amount and currency of the lead's latest opportunity: the revenue of a "Deal Won"
    #: that names no amount of its own.
    opportunity: tuple[float, str | None] | None = None

    def scores_by_group(self) -> dict[str, float]:
        """Group scores rounded for display."""
        return {"fit": round(self.fit, 2), "engagement": round(self.engagement, 2),
                "product": round(self.product, 2)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (orjson-serialisable); `from_dict` reverses it exactly.

        Tuples are left as they are (JSON writes them as arrays), so the dict is built
        with C-level copies, not per-element lists: it is made once per lead per batch.
        """
        return {
            "v": 1,
            "lead_id": self.lead_id,
            "stage": self.stage,
            "stage_since_ms": self.stage_since_ms,
            "fit": self.fit,
            "engagement": self.engagement,
            "product": self.product,
            "score_ms": self.score_ms,
            "first_event_ms": self.first_event_ms,
            "last_event_ms": self.last_event_ms,
            "traits": dict(self.traits),
            "fit_hits": self.fit_hits,
            "caps": dict(self.caps),
            "counts": dict(self.counts),
            "achieved": sorted(self.achieved),
            "seen": dict(self.seen),
            "contributions": dict(self.contributions),
            "recent": self.recent,
            "hot": self.hot,
            "last_alert_ms": self.last_alert_ms,
            "alert_rules": self.alert_rules,
            "owner": self.owner,
            "team": self.team,
            "last_alert_id": self.last_alert_id,
            "rejection": self.rejection,
            "fit_rules": self.fit_rules,
            "touches": [t.to_list() for t in self.touches],
            "nurture": self.nurture,
            "opted_out": self.opted_out,
            "changes": [c.to_row() for c in self.changes],
            "opportunity": self.opportunity,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeadState:
        """Rebuild a state from `to_dict` output (e.g. read back from a changelog).

        Read once per lead per batch, so the containers are rebuilt by C-level `map` calls
        rather than per-element conversions: JSON keeps ints and floats apart, and an int
        where a float is expected compares and adds the same.
        """
        get = d.get
        return make_state(
            d["lead_id"],
            d["stage"],
            get("stage_since_ms"),
            float(d["fit"]),
            float(d["engagement"]),
            float(d["product"]),
            get("score_ms"),
            get("first_event_ms"),
            get("last_event_ms"),
            dict(zip(traits := get("traits") or {}, map(tuple, traits.values()), strict=True)),
            tuple(map(tuple, get("fit_hits") or ())),
            {r: tuple(map(tuple, ws)) for r, ws in (get("caps") or {}).items()},
            dict(zip(counts := get("counts") or {}, map(tuple, counts.values()), strict=True)),
            frozenset(get("achieved") or ()),
            dict(get("seen") or {}),
            dict(zip(contrib := get("contributions") or {}, map(tuple, contrib.values()),
                     strict=True)),
            tuple(map(tuple, get("recent") or ())),
            bool(get("hot", False)),
            get("last_alert_ms"),
            tuple(get("alert_rules") or ()),
            get("owner"),
            get("team"),
            get("last_alert_id"),
            get("rejection"),
            get("fit_rules"),
            # states stored before touches existed have none
            tuple(map(Touch.from_list, get("touches") or ())),
            get("nurture"),
            bool(get("opted_out", False)),
            # states stored before the ledger have no changes
            tuple([ScoreChange.from_row(d["lead_id"], c) for c in get("changes") or ()]),
            # states stored before opportunity amounts were kept have none
            (float(opp[0]), opp[1]) if (opp := get("opportunity")) else None,
        )


# -- fast construction for the engine ------------------------------------------------------

_FIELDS = ("lead_id", "stage", "stage_since_ms", "fit", "engagement", "product", "score_ms",
           "first_event_ms", "last_event_ms", "traits", "fit_hits", "caps", "counts",
           "achieved", "seen", "contributions", "recent", "hot", "last_alert_ms",
           "alert_rules", "owner", "team", "last_alert_id", "rejection", "fit_rules",
           "touches", "nurture", "opted_out", "changes", "opportunity")
if tuple(f.name for f in fields(LeadState)) != _FIELDS:
    raise RuntimeError("LeadState's fields changed: update make_state")
_SET = tuple(getattr(LeadState, n).__set__ for n in _FIELDS)  # the slots' setters, in order
_new = object.__new__


def make_state(
    lead_id: str,
    stage: str,
    stage_since_ms: int | None,
    fit: float,
    engagement: float,
    product: float,
    score_ms: int | None,
    first_event_ms: int | None,
    last_event_ms: int | None,
    traits: Mapping[str, tuple[Any, int]],
    fit_hits: tuple[tuple[str, int], ...],
    caps: Mapping[str, tuple[tuple[int, int], ...]],
    counts: Mapping[str, tuple[int, ...]],
    achieved: frozenset[str],
    seen: Mapping[str, int],
    contributions: Mapping[str, tuple[float, int, str, int]],
    recent: tuple[tuple[str, str, float, int], ...],
    hot: bool,
    last_alert_ms: int | None,
    alert_rules: tuple[str, ...],
    owner: str | None,
    team: str | None = None,
    last_alert_id: str | None = None,
    rejection: str | None = None,
    fit_rules: str | None = None,
    touches: tuple[Touch, ...] = (),
    nurture: str | None = None,
    opted_out: bool = False,
    changes: tuple[ScoreChange, ...] = (),
    opportunity: tuple[float, str | None] | None = None,
) -> LeadState:
    """`LeadState(...)` with every field given in order, without the frozen `__init__`'s cost.

    The engine makes a state per call, and the frozen dataclass `__init__` sets each of
    the fields through `object.__setattr__`; this writes the slots directly. The result
    is the same: LeadState has no `__post_init__` and validates nothing.
    """
    s = _new(LeadState)
    _SET[0](s, lead_id)
    _SET[1](s, stage)
    _SET[2](s, stage_since_ms)
    _SET[3](s, fit)
    _SET[4](s, engagement)
    _SET[5](s, product)
    _SET[6](s, score_ms)
    _SET[7](s, first_event_ms)
    _SET[8](s, last_event_ms)
    _SET[9](s, traits)
    _SET[10](s, fit_hits)
    _SET[11](s, caps)
    _SET[12](s, counts)
    _SET[13](s, achieved)
    _SET[14](s, seen)
    _SET[15](s, contributions)
    _SET[16](s, recent)
    _SET[17](s, hot)
    _SET[18](s, last_alert_ms)
    _SET[19](s, alert_rules)
    _SET[20](s, owner)
    _SET[21](s, team)
    _SET[22](s, last_alert_id)
    _SET[23](s, rejection)
    _SET[24](s, fit_rules)
    _SET[25](s, touches)
    _SET[26](s, nurture)
    _SET[27](s, opted_out)
    _SET[28](s, changes)
    _SET[29](s, opportunity)
    return s


def without_seen(state: LeadState) -> LeadState:
    """The state with an empty dedup list (the form a lead record stores it in, beside its
    own window: see `stream.stages.records.LeadRecord`)."""
    if not state.seen:
        return state
    s = _new(LeadState)
    for setter, name in zip(_SET, _FIELDS, strict=True):
        setter(s, getattr(state, name))
    _SET[14](s, _EMPTY)
    return s


def with_owner(state: LeadState, owner: str | None, team: str | None) -> LeadState:
    """The state with the owner and team the assign step chose (or reassigned)."""
    return replace(state, owner=owner, team=team)
