"""The profile as rules and models read it: a flat mapping of named features.

Per event type ``T`` (well-known or declared in the catalogue's ``event_types``; dots become
underscores): ``T_total``, ``T_30m``, ``T_24h``, ``T_7d``, ``T_30d`` and ``days_since_T``. Beside them:

==========================  ============================================================================
feature                     meaning
==========================  ============================================================================
``stage``                   the journey stage (profile.py)
``is_known``                the profile is a known customer, not an anonymous visitor
``orders``, ``revenue``     lifetime
``purchased_24h`` / 7d/30d  whether there was a purchase in that window
``cart_items``              distinct items in the cart; ``cart_quantity``, ``cart_value`` likewise
``days_since_cart_change``  and ``days_since_first_seen``, ``days_since_last_seen``
``articles_read``           ids (``article_id``, else ``page``) of the FAQ views among the recent events
``viewed_items``            ``item_id`` of the product views among the recent events
``top_item_views``          how often the most viewed item was viewed among the recent events
``cart_item_ids``           the items in the cart
``consent``                 channel -> granted
``attributes``              the profile's attributes
==========================  ============================================================================

``days_since_*`` is :data:`NEVER` (100000) when the thing never happened, so ``days_since_purchase < 30``
is simply false for someone who never bought.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from typing import Any, Final

from feature_store.events import WELL_KNOWN_TYPES
from feature_store.profile import DAY_MS, WINDOWS, Profile

NEVER: Final = 100_000.0
_SCALARS: Final = (
    "stage", "is_known", "orders", "revenue", "purchased_24h", "purchased_7d", "purchased_30d",
    "cart_items", "cart_quantity", "cart_value", "days_since_cart_change", "days_since_first_seen",
    "days_since_last_seen", "articles_read", "viewed_items", "top_item_views", "cart_item_ids",
    "consent", "attributes",
)  # fmt: skip


def type_name(event_type: str) -> str:
    return event_type.replace(".", "_")


def feature_names(event_types: Iterable[str] = WELL_KNOWN_TYPES) -> frozenset[str]:
    names = set(_SCALARS)
    for event_type in event_types:
        t = type_name(event_type)
        names.update({f"{t}_total", f"days_since_{t}"} | {f"{t}_{w.name}" for w in WINDOWS})
    return frozenset(names)


def _days(now_ms: int, then_ms: int | None) -> float:
    # Not rounded: "30 / 1440" days (30 minutes) must hold 30 minutes after, to the millisecond.
    return NEVER if then_ms is None else (now_ms - then_ms) / DAY_MS


@functools.lru_cache(maxsize=64)
def _names(event_type: str) -> tuple[str, str, tuple[str, ...]]:
    """``T_total``, ``days_since_T`` and ``T_<window>`` of an event type: built once, read per decision."""
    t = type_name(event_type)
    return f"{t}_total", f"days_since_{t}", tuple(f"{t}_{w.name}" for w in WINDOWS)


@functools.lru_cache(maxsize=64)
def _defaults(event_types: tuple[str, ...]) -> dict[str, Any]:
    """The per-type features of a profile that has seen none of these types (never copied out)."""
    out: dict[str, Any] = {}
    for event_type in (*WELL_KNOWN_TYPES, *event_types):
        total, days_since, windowed = _names(event_type)
        out[total] = 0
        out[days_since] = NEVER
        out.update(dict.fromkeys(windowed, 0))
    return out


def features(profile: Profile | None, now_ms: int, event_types: Iterable[str] = ()) -> dict[str, Any]:
    """The features of a profile (``None``: a customer seen for the first time).

    ``event_types``: custom types that rules may name, which read as never seen until they are.
    """
    out = dict(_defaults(tuple(event_types)))
    if profile is None:
        out.update(
            stage="awareness", is_known=False, orders=0, revenue=0.0, purchased_24h=False, purchased_7d=False,
            purchased_30d=False, cart_items=0, cart_quantity=0, cart_value=0.0, days_since_cart_change=NEVER,
            days_since_first_seen=0.0, days_since_last_seen=0.0, articles_read=frozenset(),
            viewed_items=frozenset(), top_item_views=0, cart_item_ids=frozenset(), consent={}, attributes={},
        )  # fmt: skip
        return out
    for event_type, counts in profile.counts.items():
        total, days_since, windowed = _names(event_type)
        out[total] = counts.total
        out[days_since] = _days(now_ms, counts.last_at_ms)
        out.update(zip(windowed, (counts.windows[w.name] for w in WINDOWS), strict=True))
    views = Counter(
        str(e.properties["item_id"])
        for e in profile.recent
        if e.type == "product_view" and "item_id" in e.properties
    )
    articles = {
        str(e.properties.get("article_id", e.properties.get("page")))
        for e in profile.recent
        if e.type == "faq_view" and ("article_id" in e.properties or "page" in e.properties)
    }
    out.update(
        stage=profile.stage,
        is_known=profile.kind == "customer",
        orders=profile.orders,
        revenue=profile.revenue,
        purchased_24h=out["purchase_24h"] > 0,
        purchased_7d=out["purchase_7d"] > 0,
        purchased_30d=out["purchase_30d"] > 0,
        cart_items=len(profile.cart.lines),
        cart_quantity=profile.cart.quantity,
        cart_value=profile.cart.value,
        days_since_cart_change=_days(now_ms, profile.cart.changed_at_ms),
        days_since_first_seen=_days(now_ms, profile.first_seen_ms),
        days_since_last_seen=_days(now_ms, profile.last_seen_ms),
        articles_read=frozenset(articles),
        viewed_items=frozenset(views),
        top_item_views=max(views.values(), default=0),
        cart_item_ids=frozenset(line.item_id for line in profile.cart.lines),
        consent={channel: c.granted for channel, c in profile.consent.items()},
        attributes=dict(profile.attributes),
    )
    return out
