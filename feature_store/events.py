"""Behavioural events and what each well-known type does to a profile.

Every event, of any type, adds one to the type's lifetime counter and to its windowed counters
(30 minutes, 24 hours, 7 days, 30 days), moves the type's last-seen time and the profile's first and
last seen times, and enters the last 20 events. The well-known types do more:

==================  ====================================================================================
type                effect beyond the counters
==================  ====================================================================================
``add_to_cart``     ``item_id`` (required) gains ``quantity`` (default 1) at ``price`` (optional, kept
                    from the last add that gave one).
``remove_from_cart`` ``item_id`` (required) loses ``quantity``; without a quantity the line goes.
``checkout_started`` recorded as the last checkout time; the cart stays as it is.
``purchase``        one order, ``revenue`` added (default: the cart's value); the purchased lines leave
                    the cart: those named in ``item_ids``, or without it the whole cart. A repeat of an
                    ``order_id`` within the dedupe window is a duplicate.
``unsubscribe``     withdraws consent on ``channel`` (default ``email``).
``consent``         sets consent on ``channel`` (required) to ``granted`` (required, boolean).
``attributes``      every property becomes a profile attribute.
``signup``, ``login``, ``page_view``, ``product_view``, ``search``, ``faq_view``, ``email_open``,
``email_click``, ``chat_started``, ``support_ticket``: the counters and times alone, which the journey
stage and the rules read.
==================  ====================================================================================

Order: counters and windows are sums, so late events land in the buckets of their own time. Consent
and attributes keep the value with the latest event time, whatever the arrival order. Cart changes
older than the purchase that last emptied the cart are ignored (they were part of it); otherwise cart
lines follow arrival order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

Scalar: TypeAlias = str | int | float | bool | None
PropertyValue: TypeAlias = Scalar | list[Scalar]

EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

WELL_KNOWN_TYPES: Final = frozenset(
    {
        "page_view", "product_view", "search", "faq_view", "add_to_cart", "remove_from_cart",
        "checkout_started", "purchase", "signup", "login", "email_open", "email_click",
        "chat_started", "support_ticket", "unsubscribe", "consent", "attributes",
    }
)  # fmt: skip

# The types that do more than the counters (see the table above): only their events need effect().
TYPES_WITH_EFFECTS: Final = frozenset(
    {"add_to_cart", "remove_from_cart", "purchase", "unsubscribe", "consent", "attributes"}
)

# Properties worth keeping with an event in the profile's recent events ("last articles read").
KEY_PROPERTIES: Final = (
    "item_id", "article_id", "page", "query", "category", "order_id", "revenue", "price",
    "quantity", "channel", "granted",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """One behavioural event, validated. ``time_ms`` is the event time in Unix milliseconds."""

    type: str
    time_ms: int
    customer_id: str | None = None
    anonymous_id: str | None = None
    event_id: str | None = None
    properties: Mapping[str, PropertyValue] = ()  # type: ignore[assignment]


def _number(props: Mapping[str, PropertyValue], name: str, *, minimum: float) -> str | None:
    value = props.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}")
    return repr(value)


def _text(props: Mapping[str, PropertyValue], name: str, *, required: bool) -> str | None:
    value = props.get(name)
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def effect(event_type: str, props: Mapping[str, PropertyValue]) -> dict[str, object]:
    """What the event does beyond the counters, in the shape ``apply.lua`` reads.

    Raises ``ValueError`` naming the property when the properties do not fit the type.
    """
    try:
        return _effect(event_type, props)
    except ValueError as exc:
        raise ValueError(f"{exc} in {event_type} events") from None


def _effect(event_type: str, props: Mapping[str, PropertyValue]) -> dict[str, object]:
    out: dict[str, object] = {}
    if event_type in ("add_to_cart", "remove_from_cart"):
        out["item"] = _text(props, "item_id", required=True)
        quantity = props.get("quantity")
        if quantity is not None:
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                raise ValueError("quantity must be a whole number of at least 1")
            out["q"] = quantity
        elif event_type == "add_to_cart":
            out["q"] = 1
        if event_type == "add_to_cart" and (price := _number(props, "price", minimum=0)) is not None:
            out["price"] = price
    elif event_type == "purchase":
        if (revenue := _number(props, "revenue", minimum=0)) is not None:
            out["rev"] = revenue
        _text(props, "order_id", required=False)
        items = props.get("item_ids")
        if items is not None:
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ValueError("item_ids must be a list of item ids")
            out["items"] = items
    elif event_type == "unsubscribe":
        out["ch"] = _channel(props, required=False) or "email"
        out["g"] = "0"
    elif event_type == "consent":
        out["ch"] = _channel(props, required=True)
        granted = props.get("granted")
        if not isinstance(granted, bool):
            raise ValueError("granted is required and must be true or false")
        out["g"] = "1" if granted else "0"
    return out


def _channel(props: Mapping[str, PropertyValue], *, required: bool) -> str | None:
    channel = _text(props, "channel", required=required)
    if channel is not None and not CHANNEL.match(channel):
        raise ValueError("channel must match [a-z][a-z0-9_]{0,31}, e.g. email, sms, push, web")
    return channel


_KEY_PROPERTY_NAMES: Final = frozenset(KEY_PROPERTIES)


def key_properties(props: Mapping[str, PropertyValue]) -> dict[str, PropertyValue]:
    """The key properties among ``props``, in their order (an event has a few properties, and there are
    eleven key ones: looking each of its own up is the shorter walk)."""
    return {name: value for name, value in props.items() if name in _KEY_PROPERTY_NAMES}


def order_key(event: Event) -> str | None:
    if event.type != "purchase":
        return None
    order_id = event.properties.get("order_id")
    return f"o:{order_id}" if isinstance(order_id, str) and order_id else None


def dedupe_key(event: Event) -> str | None:
    return f"e:{event.event_id}" if event.event_id is not None else None


def attribute_values(event: Event) -> Sequence[tuple[str, PropertyValue]]:
    return list(event.properties.items()) if event.type == "attributes" else []
