"""Outbound wire models: the JSON every output topic carries, with a stable documented shape.

Each model is frozen and forbids unknown fields, so a typo in the code that builds a message
fails at once instead of shipping a field nobody documented. `to_bytes()` is the only way a
message leaves the process (orjson, UTC ISO-8601 datetimes), and `schemas/*.json` are generated
from these classes by `pipeline.models.schemagen` and checked in CI.

Schema evolution: every message carries `schema_version`. Adding an optional field keeps the
version; removing or renaming a field, or changing a type, bumps it (see schemas/README.md).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from pipeline.core.attribution import AmountIssue, Model
from pipeline.core.outputs import AlertKind as CoreAlertKind
from pipeline.core.outputs import (
    AttributedStage,
    ChangeKind,
    NurtureAction,
    NurtureReason,
    Route,
    Temperature,
)

#: Version of every outbound schema in this module; consumers should accept unknown *higher*
#: minor additions but must check this number before relying on a removed/renamed field.
SCHEMA_VERSION = 1

#: A routing message's kind: the core's alert kinds and its routes.
AlertKind = Literal[CoreAlertKind, Route]

_TOP_REASON = re.compile(r"^(?P<rule>\S+) (?P<points>[+-]?[\d.]+(?:e[+-]?\d+)?) \((?P<n>\d+)x\)$")
_TOP_FIT = re.compile(r"^(?P<rule>\S+) (?P<points>[+-]?\d+) \(fit\)$")


def _utc(dt: datetime) -> datetime:
    # Naive datetimes are refused by AwareDatetime; aware ones are normalized to UTC so the
    # wire always ends in "Z" and consumers can compare the strings.
    return dt.astimezone(UTC)


class _Wire(BaseModel):
    """Common config: frozen, no unknown fields, JSON via orjson."""

    # Every field is always written (nulls included), so the published (serialization)
    # schema lists every field as required: consumers never have to guess a default.
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-friendly dict of this message (datetimes as ISO-8601 strings)."""
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        """The message as UTF-8 JSON bytes, as it goes on the topic."""
        return orjson.dumps(self.model_dump(mode="json"))


class _Message(_Wire):
    """A top-level message: carries the schema version."""

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    #: The schema file (under schemas/) this message is validated against.
    SCHEMA_FILE: ClassVar[str] = ""

    schema_version: Literal[1] = Field(
        default=1, description="Version of this message's schema; bumped on breaking changes."
    )
    rules_version: str | None = Field(
        default=None, description="The rules that made this decision: `<format version>-<12 "
        "hex digits of a SHA-256 of the rules' content>` (`leadflow rules check` prints it). "
        "For an alert, its reassignments and escalations: the rules it was raised under. "
        "Null where no rules were involved (a dead letter from the collector).")


class Scores(_Wire):
    """The lead's scores at the time of the message (after decay)."""

    total: float = Field(description="Total score (the weighted sum of the groups).")
    fit: float = Field(default=0.0, description="Explicit fit points (title, size, domain...).")
    engagement: float = Field(default=0.0, description="Implicit engagement points (events).")
    product: float = Field(default=0.0, description="Product usage points.")


class Cause(_Wire):
    """What made the message happen: a rule and the inbound message that triggered it."""

    rule: str | None = Field(
        default=None,
        description='Rule id, threshold ("mql_threshold"), "decay", "crm:<event>"; null if none.',
    )
    message_id: str | None = Field(
        default=None, description="messageId of the triggering inbound event; null for timers."
    )
    event_name: str | None = Field(
        default=None, description="Name of the triggering event (track event or page name)."
    )


class StageChange(_Message):
    """A lead's lifecycle stage moved (`applied`) or a requested move was `refused`.

    Topic `leads.stage-changes`, key = lead_id.
    """

    SCHEMA_FILE: ClassVar[str] = "stage-change.json"

    lead_id: str = Field(min_length=1, description="The lead (userId, or anon:<anonymousId>).")
    from_stage: str = Field(description="Stage before the move.")
    to_stage: str = Field(description="Stage after the move (or the refused target stage).")
    status: Literal["applied", "refused"] = Field(description="Whether the move happened.")
    reason: str | None = Field(default=None, description="Why a move was refused; else null.")
    at: AwareDatetime = Field(description="When the move happened (event time), ISO-8601 UTC.")
    at_ms: int = Field(description="`at` in epoch milliseconds.")
    cause: Cause = Field(description="The rule and inbound message that caused the move.")
    scores: Scores | None = Field(
        default=None, description="Scores after the move; null for refused moves."
    )

    @field_validator("at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class TopReason(_Wire):
    """One rule that contributed to the score."""

    rule: str = Field(description="Rule id.")
    points: float = Field(description="Points the rule awarded (after caps, before decay).")
    count: int | None = Field(
        default=None, description="How many events earned them; null for fit rules."
    )

    @classmethod
    def parse(cls, line: str) -> TopReason:
        """From the core's short line (``pricing_page +30 (3x)``, ``title_vp +10 (fit)``)."""
        m = _TOP_REASON.match(line)
        if m:
            return cls(rule=m["rule"], points=float(m["points"]), count=int(m["n"]))
        m = _TOP_FIT.match(line)
        if m:
            return cls(rule=m["rule"], points=float(m["points"]), count=None)
        raise ValueError(f"not a top-reason line: {line!r}")


class LeadSummary(_Wire):
    """What an account executive needs to act on the alert.

    The e-mail address is included on purpose (the AE has to contact the lead); topics that
    carry it are personal data. leadflow never logs these values, only counts and codes.
    """

    email: str | None = Field(default=None, description="Contact e-mail (personal data).")
    email_domain: str | None = Field(default=None, description="Domain of the e-mail address.")
    name: str | None = Field(default=None, description="First and last name, if known.")
    title: str | None = Field(default=None, description="Job title.")
    company: str | None = Field(default=None, description="Company name.")
    country: str | None = Field(default=None, description="Country (as sent in traits).")
    employees: int | None = Field(default=None, description="Company size in employees.")


class Assignment(_Wire):
    """The audit trail of how the owner was chosen."""

    reason: str = Field(
        description="Why this owner: account owner, territory, round robin, no rep available..."
    )
    skipped: list[str] = Field(
        default_factory=list, description="Reps passed over (at cap, unavailable)."
    )
    excluded: list[str] = Field(
        default_factory=list, description="Reps excluded (e.g. the one who let the SLA lapse)."
    )


class RoutingAlert(_Message):
    """A lead for a team: hot alerts (`routing.<team>`), nurture and recycle hand-offs.

    Topic `routing.<team>`, `routing.nurture`, `routing.recycle` or `routing.review`;
    key = lead_id.
    """

    SCHEMA_FILE: ClassVar[str] = "routing-alert.json"

    alert_id: str = Field(min_length=1, description="Stable id: replays produce the same id.")
    lead_id: str = Field(min_length=1, description="The lead.")
    team: str = Field(
        description="Owning team; `nurture`, `recycle` or `review` for those topics.")
    kind: AlertKind = Field(description="What raised it: instant trigger, hot score, PQL...")
    temperature: Temperature = Field(description="hot (alert), warm (nurture), cold (recycle).")
    owner: str | None = Field(default=None, description="Assigned rep; null if none.")
    assignment: Assignment | None = Field(
        default=None, description="How the owner was chosen; null when nobody is assigned."
    )
    reassigned: bool = Field(
        default=False, description="True when re-sent to a new owner after an SLA breach."
    )
    triggered_at: AwareDatetime = Field(description="Time of the triggering event, UTC.")
    triggered_ms: int = Field(description="`triggered_at` in epoch milliseconds.")
    sla_seconds: int | None = Field(
        default=None, description="Seconds to acknowledge before escalation; null: no SLA."
    )
    due_at: AwareDatetime | None = Field(
        default=None, description="When the SLA lapses, UTC; null without SLA."
    )
    trigger: Cause = Field(description="Rule and inbound message that triggered the alert.")
    scores: Scores = Field(description="Scores when the alert was raised.")
    top_reasons: list[TopReason] = Field(
        default_factory=list, description="Biggest contributions first."
    )
    lead: LeadSummary = Field(default_factory=LeadSummary, description="Who the lead is.")
    reason: str | None = Field(
        default=None, description="Why it is here: for review, the requirement it failed.")
    updates: str | None = Field(
        default=None, description="alert_id of the earlier alert (in the cooldown) that this "
        "stricter one updates: same owner, the tighter SLA; null if none.")

    @field_validator("triggered_at", "due_at")
    @classmethod
    def _in_utc(cls, v: datetime | None) -> datetime | None:
        return _utc(v) if v is not None else None


class Escalation(_Message):
    """An alert was not acknowledged within its SLA and was reassigned.

    Topic `routing.escalations`; key = lead_id.
    """

    SCHEMA_FILE: ClassVar[str] = "escalation.json"

    alert_id: str = Field(min_length=1, description="The alert that breached its SLA.")
    lead_id: str = Field(min_length=1, description="The lead.")
    team: str = Field(description="Owning team.")
    kind: AlertKind | None = Field(default=None, description="The alert's kind.")
    from_owner: str | None = Field(description="Rep who did not acknowledge in time.")
    to_owner: str | None = Field(description="Rep it was reassigned to; null if none left.")
    sla_seconds: int = Field(ge=0, description="The SLA that lapsed.")
    triggered_at: AwareDatetime = Field(description="Time of the triggering event, UTC.")
    breached_at: AwareDatetime = Field(description="When the breach was detected, UTC.")
    reason: str = Field(description='Human reason, e.g. "not acknowledged within 300s".')

    @field_validator("triggered_at", "breached_at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class LeadAssignment(_Message):
    """Who owns a lead now: every placement of an alert by the assign step (and every
    reassignment after an SLA breach), for a CRM sync. The owner is also on the lead.

    Topic `leads.assignments`; key = lead_id.
    """

    SCHEMA_FILE: ClassVar[str] = "lead-assignment.json"

    lead_id: str = Field(min_length=1, description="The lead.")
    owner: str | None = Field(description="The rep who owns it; null: waiting in the team queue.")
    team: str = Field(description="The owning team.")
    alert_id: str = Field(min_length=1, description="The alert that was placed.")
    kind: AlertKind = Field(description="The alert's kind.")
    reassigned: bool = Field(description="True after an SLA breach moved it to another rep.")
    reason: str = Field(description="Why this owner (or why none).")
    at: AwareDatetime = Field(description="Time of the triggering event, UTC.")
    due_at: AwareDatetime | None = Field(description="When its SLA lapses, UTC; null: none.")

    @field_validator("at", "due_at")
    @classmethod
    def _in_utc(cls, v: datetime | None) -> datetime | None:
        return _utc(v) if v is not None else None


class DeadLetter(_Message):
    """An inbound message that could not be used, with its original bytes.

    Topic `events.deadletter`; key = the original message's key.
    """

    SCHEMA_FILE: ClassVar[str] = "dead-letter.json"

    reason: str = Field(description="Reason code (see pipeline.models.events.REASONS).")
    detail: str = Field(description="What is wrong, naming the field; no field values.")
    source_topic: str = Field(description="Topic the message was read from.")
    partition: int = Field(ge=0, description="Its partition.")
    offset: int = Field(ge=0, description="Its offset.")
    timestamp_ms: int | None = Field(description="Its Kafka record timestamp (epoch ms).")
    key_b64: str | None = Field(description="Original key bytes, base64; null if no key.")
    value_b64: str = Field(description="Original value bytes, base64 (may be personal data).")
    value_size: int = Field(ge=0, description="Length of the original value in bytes.")
    received_at: AwareDatetime = Field(description="When leadflow dead-lettered it, UTC.")
    origin: Literal["stream", "collector"] = Field(
        default="stream", description="Who refused it: the stream's ingest (read from "
        "source_topic at partition/offset) or the HTTP collector (never on a topic: "
        "source_topic is where it was meant to go, partition and offset are 0, and the "
        "value is the message as it would have gone on that topic, write key removed).")
    batch_index: int | None = Field(
        default=None, ge=0, description="For the collector: its index in the batch request.")
    replay_id: str | None = Field(
        default=None, description="The `leadflow deadletters replay` that produced the "
        "message (its `leadflow-replay` Kafka header): it failed again after a replay, and "
        "later replays skip it unless forced. Null: it failed on first delivery.")
    replay_of: str | None = Field(
        default=None, description="With replay_id: the dead letter that replay produced "
        "again, as partition:offset on the dead-letter topic (later replays skip it too).")

    @field_validator("received_at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class PublishedRules(_Message):
    """A rules file as `leadflow rules publish` put it on the rules topic.

    Topic `leadflow.rules` (compacted, one partition); key = the revision, so compaction
    keeps the latest record of every revision. Workers compile `source` themselves: the
    text is what is trusted, `rules_version` and `revision` say what the publisher saw.
    """

    SCHEMA_FILE: ClassVar[str] = "published-rules.json"

    revision: int = Field(ge=0, description="The file's `revision`: publishing refuses one "
                          "below the latest published, and workers never go back to one.")
    source: str = Field(description="The rules file's YAML text, as validated.")
    file: str = Field(description="The name of the file it was published from.")
    published_at: AwareDatetime = Field(description="When it was published, UTC.")

    @field_validator("published_at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class AttributedTouch(_Wire):
    """One marketing touch of the lead's journey, classified by the rules' channels."""

    channel: str = Field(description="Channel from the rules file's `channels:`, or `other`.")
    source: str | None = Field(description="utm_source / context.campaign.source.")
    medium: str | None = Field(description="utm_medium / context.campaign.medium.")
    campaign: str | None = Field(description="utm_campaign / context.campaign.name.")
    referrer: str | None = Field(description="The referring host (no path or query).")
    at: AwareDatetime = Field(description="Event time of the touch, ISO-8601 UTC.")
    at_ms: int = Field(description="`at` in epoch milliseconds.")
    message_id: str = Field(description="messageId of the event that made the touch.")
    count: int = Field(ge=1, description="Consecutive touches of this channel folded in it.")
    marks: list[str] = Field(description="Stages this touch was the latest touch before "
                             "(`lead`: the lead-creation touch).")

    @field_validator("at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class ModelCredit(_Wire):
    """The credit of one attribution model: per touch, and summed per channel."""

    model: Model = Field(description="The attribution model.")
    weights: list[float] = Field(description="One weight per touch, in `touches` order; "
                                 "they sum to 1 (empty when the lead had no touch).")
    channels: dict[str, float] = Field(description="The weights summed per channel.")


class Deal(_Wire):
    """The deal amount the CRM event carried."""

    kind: Literal["pipeline", "revenue"] = Field(
        description="`pipeline` for Opportunity Created, `revenue` for Deal Won.")
    amount: float | None = Field(description="The `amount` property; null when none was "
                                 "given or it is unusable (see `amount_issue`).")
    currency: str | None = Field(description="The `currency` property, upper case.")
    amount_issue: AmountIssue | None = Field(
        description="Why a given amount is not used; the move is still attributed.")


class LeadAttribution(_Message):
    """A move to MQL, SQL, opportunity or customer and the touches credited with it.

    Topic `leads.attribution`, key = lead_id.
    """

    SCHEMA_FILE: ClassVar[str] = "lead-attribution.json"

    attribution_id: str = Field(description="`<lead_id>:<stage>:<messageId or at_ms>`: the "
                                "same move replayed gives the same id.")
    lead_id: str = Field(min_length=1, description="The lead (userId, or anon:<anonymousId>).")
    stage: AttributedStage = Field(description="The stage the lead moved to.")
    from_stage: str = Field(description="Stage before the move.")
    at: AwareDatetime = Field(description="When the move happened (event time), ISO-8601 UTC.")
    at_ms: int = Field(description="`at` in epoch milliseconds.")
    cause: Cause = Field(description="The rule and inbound message that caused the move.")
    touches: list[AttributedTouch] = Field(
        description="The journey before the move, oldest first (bounded).")
    credits: list[ModelCredit] = Field(description="One entry per configured model.")
    deal: Deal | None = Field(description="For opportunity and customer: the deal amount.")

    @field_validator("at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class NurtureMessage(_Message):
    """A lead enters (`enroll`) or leaves (`exit`) marketing's nurture track, and why.

    Topic `leads.nurture`, key = lead_id. For the marketing automation side: start a
    lead's nurture e-mails on enroll, stop them on exit. A lead is never enrolled while
    a rep works it (alerted, accepted, qualified, with an opportunity) or after it
    unsubscribed.
    """

    SCHEMA_FILE: ClassVar[str] = "lead-nurture.json"

    nurture_id: str = Field(description="`<lead_id>:<action>:<messageId or at_ms>`: the "
                            "same change replayed gives the same id.")
    lead_id: str = Field(min_length=1, description="The lead (userId, or anon:<anonymousId>).")
    action: NurtureAction = Field(description="`enroll`: start nurture; `exit`: stop it.")
    reason: NurtureReason = Field(
        description="Why: enroll `warm` (crossed the mql line without an alert) or "
        "`recycled` (sent back to marketing); exit `sales_alerted`, `sales_accepted`, "
        "`qualified`, `opportunity_opened`, `customer`, `disqualified` or `unsubscribed`.")
    stage: str = Field(description="The lead's stage after the change.")
    at: AwareDatetime = Field(description="When it happened (event time), ISO-8601 UTC.")
    at_ms: int = Field(description="`at` in epoch milliseconds.")
    cause: Cause = Field(description="The rule or CRM move and the inbound message behind it.")
    interest: str | None = Field(
        description="Enroll: the engagement or product rule that earned the lead the most "
        "points (e.g. `pricing_page`), to pick a nurture track by; null on exit.")

    @field_validator("at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


class ScoreChangeMessage(_Message):
    """One change of one of a lead's group scores: the score ledger.

    Topic `leads.score-changes`, key = lead_id; off with `LEADFLOW_SCORE_LEDGER=false`. An
    event that hits two rules gives two messages, in rule order, the second one's `scores`
    including both; decay is a change of its own (`kind` and `rule` `decay`, a negative
    `delta`), one per group it lowered.
    """

    SCHEMA_FILE: ClassVar[str] = "score-change.json"

    change_id: str = Field(description="`<lead_id>:<rule>:<group>:<messageId or at_ms>`: the "
                           "same change replayed gives the same id.")
    lead_id: str = Field(min_length=1, description="The lead (userId, or anon:<anonymousId>).")
    kind: ChangeKind = Field(description="`event`: an engagement, product or negative rule "
                             "matched an event; `fit`: a trait rule now holds or no longer "
                             "does; `decay`: inactivity lowered the group.")
    rule: str = Field(description="The rule id (`decay` for decay).")
    group: Literal["fit", "engagement", "product"] = Field(description="The group it changed.")
    delta: float = Field(description="Points added (negative: taken off), after caps.")
    scores: Scores = Field(description="The lead's scores right after this change.")
    at: AwareDatetime = Field(description="Event time of the change, ISO-8601 UTC (decay: "
                              "the time it was decayed up to).")
    at_ms: int = Field(description="`at` in epoch milliseconds.")
    message_id: str | None = Field(description="messageId of the event being scored (for "
                                   "decay, the event whose arrival decayed the lead); null "
                                   "when the decay timer decayed it.")

    @field_validator("at")
    @classmethod
    def _in_utc(cls, v: datetime) -> datetime:
        return _utc(v)


#: Every outbound model, by schema file name (for schemagen and the docs).
OUTBOUND: tuple[type[_Message], ...] = (StageChange, RoutingAlert, Escalation, LeadAssignment,
                                        DeadLetter, PublishedRules, LeadAttribution,
                                        NurtureMessage, ScoreChangeMessage)
