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
from collections.abc import Iterable, Mapping
from typing import Any, Final

from feature_store.events import WELL_KNOWN_TYPES
from feature_store.profile import (
    DAY_MS,
    WINDOWS,
    RawProfile,
    StageRules,
    as_int,
    attribute,
    granted,
    recent_events,
    stage,
    window_sums,
)

NEVER: Final = 100_000.0
_STAGE_RULES: Final = StageRules()  # the defaults
_NONE: Final = (0,) * len(WINDOWS)  # the windowed counts of a type with no event in any window
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
def _names(event_type: str) -> tuple[str, str, tuple[str, ...], str]:
    """``T_total``, ``days_since_T`` and ``T_<window>`` of an event type, and the profile's field of its
    last time: built once, read per decision."""
    t = type_name(event_type)
    return f"{t}_total", f"days_since_{t}", tuple(f"{t}_{w.name}" for w in WINDOWS), f"t:{event_type}"


@functools.lru_cache(maxsize=64)
def _defaults(event_types: tuple[str, ...]) -> dict[str, Any]:
    """The per-type features of a profile that has seen none of these types (never copied out)."""
    out: dict[str, Any] = {}
    for event_type in (*WELL_KNOWN_TYPES, *event_types):
        total, days_since, windowed, _ = _names(event_type)
        out[total] = 0
        out[days_since] = NEVER
        out.update(dict.fromkeys(windowed, 0))
    return out


class Features(dict[str, Any]):
    """The features of one profile: every name, as rules read them. ``touched`` names those whose value
    may differ from a profile's that saw nothing (the scalars, and the types the profile has seen): the
    others hold the defaults, 0 and never, which neither the scoring vector nor the decision log keeps,
    so those read ``touched`` instead of a hundred names (models/vectorize.py, app/services.py)."""

    __slots__ = ("touched",)

    touched: tuple[str, ...]


def touched(values: Mapping[str, Any]) -> Iterable[str]:
    """The names worth reading in ``values``: its ``touched`` when it is :class:`Features`, else all."""
    return values.touched if isinstance(values, Features) else values.keys()


def features(
    raw: RawProfile | None,
    now_ms: int,
    event_types: Iterable[str] = (),
    *,
    known: bool = True,
    rules: StageRules = _STAGE_RULES,
) -> Features:
    """The features of a profile as Redis holds it (``None``, or one that does not exist: a customer
    seen for the first time). ``known``: a customer id's profile, not an anonymous visitor's.

    ``event_types``: custom types that rules may name, which read as never seen until they are.

    Read from the stored form, not from the :class:`~feature_store.profile.Profile` the API shows
    (``decode``), with the same helpers: a decision needs the numbers, not the objects, and building
    them took a fifth of the worker's time in a decision's read (docs/performance.md).
    """
    out = Features(_defaults(tuple(event_types)))
    out.touched = _SCALARS
    if raw is None or not raw.exists:
        out.update(
            stage="awareness", is_known=False, orders=0, revenue=0.0, purchased_24h=False, purchased_7d=False,
            purchased_30d=False, cart_items=0, cart_quantity=0, cart_value=0.0, days_since_cart_change=NEVER,
            days_since_first_seen=0.0, days_since_last_seen=0.0, articles_read=frozenset(),
            viewed_items=frozenset(), top_item_views=0, cart_item_ids=frozenset(), consent={}, attributes={},
        )  # fmt: skip
        return out
    p = raw.profile
    windows = window_sums(raw.windows, now_ms)
    last_seen: int | None = None
    consent: dict[str, bool] = {}
    attributes: dict[str, Any] = {}
    seen: list[str] = []
    for name, value in p.items():
        prefix, _, rest = name.partition(":")
        if prefix == "n":
            total, days_since, windowed, last_field = _names(rest)
            seen += (total, days_since, *windowed)
            out[total] = int(value)
            last = p.get(last_field)
            if last is None:
                out[days_since] = NEVER
            else:
                last_ms = int(float(last))
                out[days_since] = (now_ms - last_ms) / DAY_MS
                if last_seen is None or last_ms > last_seen:
                    last_seen = last_ms
            counts = windows.get(rest, _NONE)
            for i, window_name in enumerate(windowed):
                out[window_name] = counts[i]
        elif prefix == "c":
            consent[rest] = granted(value)
        elif prefix == "a":
            attributes[rest] = attribute(value)
    views: dict[str, int] = {}
    articles = set()
    for event in recent_events(raw):
        kind = event["y"]
        if kind == "product_view":
            props = event.get("p")
            if props and "item_id" in props:
                item = str(props["item_id"])
                views[item] = views.get(item, 0) + 1
        elif kind == "faq_view":
            props = event.get("p")
            if props and ("article_id" in props or "page" in props):
                articles.add(str(props.get("article_id", props.get("page"))))
    # The cart's lines, oldest change first (as profile.cart_lines orders them: the sum's order is the
    # same), as tuples: a decision needs their totals, not CartLine objects.
    lines = []
    for item_id, line in raw.cart.items():
        quantity, price, changed = line.split("|")
        lines.append((int(changed), item_id, int(quantity), float(price) if price else 0.0))
    lines.sort()
    out.update(
        stage=stage(p, len(lines), now_ms, rules),
        is_known=known,
        orders=int(p.get("orders", 0)),
        revenue=round(float(p.get("revenue", 0)), 2),
        purchased_24h=out["purchase_24h"] > 0,
        purchased_7d=out["purchase_7d"] > 0,
        purchased_30d=out["purchase_30d"] > 0,
        cart_items=len(lines),
        cart_quantity=sum([line[2] for line in lines]),
        cart_value=round(sum([line[2] * line[3] for line in lines], 0.0), 2),
        days_since_cart_change=_days(now_ms, as_int(p.get("cart_changed"))),
        days_since_first_seen=_days(now_ms, as_int(p.get("first"))),
        days_since_last_seen=_days(now_ms, last_seen),
        articles_read=frozenset(articles),
        viewed_items=frozenset(views),
        top_item_views=max(views.values(), default=0),
        cart_item_ids=frozenset(line[1] for line in lines),
        consent=dict(sorted(consent.items())),
        attributes=dict(sorted(attributes.items())),
    )
    out.touched = (*_SCALARS, *seen)
    return out
