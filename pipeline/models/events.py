"""Inbound messages: the Segment Spec calls (track, page, screen, identify, alias, group).

`parse_message` is the one door from raw Kafka bytes to a core `Event`: it decodes once
with orjson, validates with pydantic and raises `InvalidEvent` with a short reason code
(used as the dead-letter reason and as a metric label) and a detail naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pipeline.core.event import EMPTY, EVENT_TYPES, Event, make_event
from pipeline.errors import InvalidEvent

# Reason codes a message can be dead-lettered for; stable, used as metric label values.
REASONS = (
    "oversize",
    "bad_encoding",
    "bad_json",
    "not_an_object",
    "invalid",
    "missing_id",
    "future_timestamp",
    "no_timestamp",
)

_Id = Annotated[str, Field(min_length=1, max_length=256)]


# The "userId or anonymousId" rule of `_Base._needs_identity`, for the published JSON Schema.
_IDENTITY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"required": ["userId"], "properties": {"userId": {"type": "string"}}},
        {"required": ["anonymousId"], "properties": {"anonymousId": {"type": "string"}}},
    ]
}


class _Base(BaseModel):
    # Segment libraries add fields we do not use (integrations, _metadata, writeKey...).
    model_config = ConfigDict(
        extra="allow", frozen=True, populate_by_name=True, json_schema_extra=_IDENTITY_SCHEMA
    )

    message_id: _Id = Field(alias="messageId")
    anonymous_id: _Id | None = Field(default=None, alias="anonymousId")
    user_id: _Id | None = Field(default=None, alias="userId")
    timestamp: datetime | None = None
    original_timestamp: datetime | None = Field(default=None, alias="originalTimestamp")
    sent_at: datetime | None = Field(default=None, alias="sentAt")
    received_at: datetime | None = Field(default=None, alias="receivedAt")
    context: dict[str, Any] = Field(default_factory=dict)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_identity(self) -> _Base:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("either userId or anonymousId is required")
        return self

    def event_time(self) -> datetime | None:
        """The Segment event time: timestamp, else originalTimestamp, sentAt, receivedAt."""
        return self.timestamp or self.original_timestamp or self.sent_at or self.received_at


class Track(_Base):
    """A user action, e.g. "Demo Requested"; CRM moves are track events too."""

    type: Literal["track"]
    event: Annotated[str, Field(min_length=1, max_length=200)]


class Page(_Base):
    """A page view."""

    type: Literal["page"]
    name: str | None = Field(default=None, max_length=500)
    category: str | None = Field(default=None, max_length=500)


class Screen(_Base):
    """A screen view in a mobile app (the mobile and Node SDKs' page)."""

    type: Literal["screen"]
    name: str | None = Field(default=None, max_length=500)
    category: str | None = Field(default=None, max_length=500)


class Identify(_Base):
    """Ties a user to their traits (e-mail, title, company...)."""

    type: Literal["identify"]


class Alias(_Base):
    """Merges two identities: previousId becomes userId."""

    type: Literal["alias"]
    previous_id: _Id = Field(alias="previousId")


class Group(_Base):
    """Associates a user with a group (account/company)."""

    type: Literal["group"]
    group_id: _Id = Field(alias="groupId")


AnyCall = Track | Page | Screen | Identify | Alias | Group
SegmentMessage = Annotated[AnyCall, Field(discriminator="type")]
_ADAPTER: TypeAdapter[AnyCall] = TypeAdapter(SegmentMessage)


def _first_error(exc: ValidationError) -> str:
    # The detail names the field (Segment's name) and what is wrong, never the value, since
    # details end up in logs, metrics and HTTP answers. The union's tag ("track") is dropped
    # from the path: "event: ..." rather than "track.event: ...".
    errors = exc.errors(include_url=False, include_input=False)
    err = errors[0]
    loc = list(err["loc"])
    if loc and loc[0] in EVENT_TYPES:
        loc = loc[1:]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = ["type"]
    where = ".".join(str(p) for p in loc) or "message"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}{more}"


# orjson reads up to 1024 levels but writes at most 254: a message nested deeper than this
# would validate here and then fail every later encode (internal topics, tables, outputs).
MAX_DEPTH = 128


def _depth_over(data: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v if isinstance(x, dict | list))
    return False


def decode(raw: bytes, *, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """Decode raw bytes to a JSON object, or raise InvalidEvent saying why not."""
    if len(raw) > max_bytes:
        raise InvalidEvent("oversize", f"message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower() or "surrogate" in str(exc).lower():
            raise InvalidEvent("bad_encoding", f"not valid UTF-8 JSON: {exc}") from None
        raise InvalidEvent("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    # Cheap first: fewer opening brackets than the limit cannot nest deeper than it.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth_over(data, MAX_DEPTH):
        raise InvalidEvent("invalid", f"message: nested deeper than {MAX_DEPTH} levels")
    return data


def validate(data: dict[str, Any]) -> AnyCall:
    """Validate a decoded message against the Segment Spec models."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        missing_id = any(
            e["type"] == "missing" and e["loc"][-1] in ("messageId", "userId", "anonymousId")
            for e in exc.errors()
        ) or "userId or anonymousId" in str(exc)
        raise InvalidEvent("missing_id" if missing_id else "invalid", _first_error(exc)) from None


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:  # Segment timestamps are ISO-8601; a naive one is taken as UTC
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def lead_key(user_id: str | None, anonymous_id: str | None) -> str:
    """The state key of a message before identity stitching: userId, else anon:<anonymousId>."""
    if user_id:
        return user_id
    return f"anon:{anonymous_id}"


def to_event(
    msg: AnyCall,
    *,
    source: str = "",
    now_ms: int | None = None,
    max_future_skew_ms: int = 300_000,
) -> Event:
    """Turn a validated Segment message into the core's Event.

    `now_ms` is the time the message reached Kafka (its record timestamp): it stands in
    when the message carries no time at all, and bounds clock skew into the future.
    """
    when = msg.event_time()
    if when is None:
        if now_ms is None:
            raise InvalidEvent("no_timestamp", "timestamp: no timestamp, sentAt or receivedAt")
        ts = now_ms
    else:
        ts = _ms(when)
    if now_ms is not None and ts > now_ms + max_future_skew_ms:
        raise InvalidEvent(
            "future_timestamp",
            f"timestamp: {when.isoformat() if when else ts} is more than "
            f"{max_future_skew_ms // 1000}s ahead of the broker time",
        )
    ctx = msg.context
    page = ctx.get("page") if isinstance(ctx.get("page"), dict) else None
    url = msg.properties.get("url") or (page.get("url") if page else None) or ""
    referrer = msg.properties.get("referrer") or (page.get("referrer") if page else None)
    campaign = ctx.get("campaign")
    utm: Any = EMPTY
    if isinstance(campaign, dict) and campaign:
        utm = MappingProxyType({str(k): str(v) for k, v in campaign.items()})
    traits = msg.traits or (ctx.get("traits") if isinstance(ctx.get("traits"), dict) else None)
    if isinstance(msg, Track):
        name = msg.event
    elif isinstance(msg, Page | Screen):
        name = msg.name or ""
    elif isinstance(msg, Alias):
        name = msg.previous_id
    elif isinstance(msg, Group):
        name = msg.group_id
    else:
        name = ""
    return make_event(
        msg.message_id,
        lead_key(msg.user_id, msg.anonymous_id),
        msg.type,
        ts,
        name,
        source,
        msg.properties or EMPTY,
        traits or EMPTY,
        str(url),
        utm,
        msg.anonymous_id,
        msg.user_id,
        referrer if isinstance(referrer, str) else "",
    )


def parse_message(
    raw: bytes,
    *,
    source: str = "",
    now_ms: int | None = None,
    max_bytes: int = 64 * 1024,
    max_future_skew_ms: int = 300_000,
) -> Event:
    """Raw bytes -> core Event, or InvalidEvent with a reason code and a detail."""
    return to_event(
        validate(decode(raw, max_bytes=max_bytes)),
        source=source,
        now_ms=now_ms,
        max_future_skew_ms=max_future_skew_ms,
    )
