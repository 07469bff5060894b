"""Attribution models: how much of a conversion each touch of the journey earned.

Every model takes the touches before the conversion, oldest first, and returns one weight
per touch, the weights summing to 1 (an empty journey gets none):

- `first_touch`: all of it to the first touch; `last_touch`: all to the latest.
- `linear`: the same share to every touch.
- `u_shaped` (position-based): 40 % to the first, 40 % to the last, 20 % spread over the
  touches between; with no touch between, the 20 % is split over the first and last.
- `w_shaped`: 30 % each to the first, the lead-creation and the last touch, 10 % spread over
  the others (with none, over those three). Positions that are one touch add up, so a lead
  created on its first touch gives that touch 60 %. A lead that had no touch when it became
  known counts its first touch as the lead-creation touch.

Folded touches (`Touch.count`) count once: folding already says one channel held the lead
through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pipeline.core.touches import Touch, created_index
from pipeline.errors import InvalidEvent

Model = Literal["first_touch", "last_touch", "linear", "u_shaped", "w_shaped"]
MODELS: tuple[Model, ...] = get_args(Model)


def first_touch(n: int, created: int | None = None) -> tuple[float, ...]:
    """All credit to the first touch."""
    return tuple(1.0 if i == 0 else 0.0 for i in range(n))


def last_touch(n: int, created: int | None = None) -> tuple[float, ...]:
    """All credit to the latest touch."""
    return tuple(1.0 if i == n - 1 else 0.0 for i in range(n))


def linear(n: int, created: int | None = None) -> tuple[float, ...]:
    """The same share to every touch."""
    return tuple(1.0 / n for _ in range(n))


def _positional(n: int, keys: Sequence[int], key_share: float) -> tuple[float, ...]:
    """`key_share` to each key position (repeats add up), the rest spread over the others,
    or over the key positions when every touch is one."""
    weights = [0.0] * n
    for k in keys:
        weights[k] += key_share
    rest = 1.0 - key_share * len(keys)
    others = [i for i in range(n) if i not in keys]
    spread = others or list(keys)
    for i in spread:
        weights[i] += rest / len(spread)
    return tuple(weights)


def u_shaped(n: int, created: int | None = None) -> tuple[float, ...]:
    """40 % first, 40 % last, 20 % over the touches between."""
    if n <= 1:
        return (1.0,) * n
    return _positional(n, (0, n - 1), 0.4)


def w_shaped(n: int, created: int | None = None) -> tuple[float, ...]:
    """30 % each to the first, lead-creation and last touch, 10 % over the others."""
    if n <= 1:
        return (1.0,) * n
    c = created if created is not None and 0 <= created < n else 0
    return _positional(n, (0, c, n - 1), 0.3)


_MODELS: Mapping[str, Callable[[int, int | None], tuple[float, ...]]] = {
    "first_touch": first_touch, "last_touch": last_touch, "linear": linear,
    "u_shaped": u_shaped, "w_shaped": w_shaped,
}
if tuple(_MODELS) != MODELS:
    raise RuntimeError("attribution models and their names differ")


def weights(model: str, journey: Sequence[Touch]) -> tuple[float, ...]:
    """The weight of each touch of `journey` under `model` (a name from `MODELS`)."""
    if not journey:
        return ()
    return _MODELS[model](len(journey), created_index(journey))


#: The channel credited with a conversion whose lead had no touch at all.
UNATTRIBUTED = "unattributed"


def by_channel(journey: Sequence[Touch], ws: Sequence[float]) -> dict[str, float]:
    """Credit summed per channel, in the order channels first appear; a conversion without
    touches is credited to `UNATTRIBUTED`, so that the credit always sums to one move."""
    if not journey:
        return {UNATTRIBUTED: 1.0}
    out: dict[str, float] = {}
    for t, w in zip(journey, ws, strict=True):
        out[t.channel] = out.get(t.channel, 0.0) + w
    return out


# -- deal amounts --------------------------------------------------------------------------

#: Why a deal amount that was given is not used (a metric label, and the message says it).
AmountIssue = Literal["not_a_number", "not_finite", "negative"]
AMOUNT_ISSUES: tuple[str, ...] = get_args(AmountIssue)


def deal_amount(properties: Mapping[str, Any]) -> tuple[float | None, str | None, str | None]:
    """(amount, currency, issue) of a CRM event's `amount` and `currency` properties.

    A missing amount is (None, ..., None). One that is given but unusable (text that is not
    a number, a boolean, NaN or infinite, below zero) is ignored with its issue named: the
    stage move it comes with still happens and is attributed, only without an amount.
    """
    cur = properties.get("currency")
    currency = cur.strip().upper()[:8] if isinstance(cur, str) and cur.strip() else None
    v = properties.get("amount")
    if v is None or v == "":
        return None, currency, None
    if isinstance(v, bool):
        return None, currency, "not_a_number"
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None, currency, "not_a_number"
    if not isinstance(v, int | float):
        return None, currency, "not_a_number"
    try:
        f = float(v)
    except OverflowError:  # an integer too large for a float
        return None, currency, "not_finite"
    if not math.isfinite(f):
        return None, currency, "not_finite"
    if f < 0:
        return None, currency, "negative"
    return f, currency, None


# -- campaign costs ------------------------------------------------------------------------

#: The track event that reports what a campaign cost (properties channel, campaign, amount,
#: currency): counted per channel for CAC, never scored as a lead's activity.
CAMPAIGN_COST = "Campaign Cost"
#: The dead-letter reason of a "Campaign Cost" that cannot be counted.
BAD_CAMPAIGN_COST = "bad_campaign_cost"


@dataclass(frozen=True, slots=True)
class CampaignCost:
    """What a campaign cost: `amount` in `currency` (as given, not converted)."""

    channel: str
    campaign: str | None
    amount: float
    currency: str | None
    message_id: str


def campaign_cost(message_id: str, properties: Mapping[str, Any]) -> CampaignCost:
    """The cost a "Campaign Cost" event reports; InvalidEvent naming the property if unusable.

    `channel` must be given (a channel of the rules file; the metric counts any other as
    `other`); `amount` must be a number of zero or more, as for deal amounts.
    """
    ch = properties.get("channel")
    if not isinstance(ch, str) or not ch.strip():
        raise InvalidEvent(BAD_CAMPAIGN_COST,
                           f"{CAMPAIGN_COST!r} needs properties.channel (a channel name)")
    amount, currency, issue = deal_amount(properties)
    if amount is None:
        got = repr(properties.get("amount"))[:80]
        raise InvalidEvent(BAD_CAMPAIGN_COST, f"{CAMPAIGN_COST!r} properties.amount "
                           f"{'is missing' if issue is None else f'{got}: {issue}'}")
    camp = properties.get("campaign")
    campaign = camp.strip()[:200] if isinstance(camp, str) and camp.strip() else None
    return CampaignCost(ch.strip().lower(), campaign, amount, currency, message_id)
