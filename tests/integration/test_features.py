"""A decision's features, read from the profile as Redis holds it (features.py), agree with the profile
the API shows (profile.py ``decode``) for profiles made by every kind of event, on a real Redis."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from app.services import _logged_features
from feature_store import Event, IdKind, ProfileStore
from feature_store import keys as k
from feature_store.features import NEVER, features
from feature_store.profile import DAY_MS, WINDOWS, Profile, StageRules
from models.vectorize import vector
from tests.conftest import Clock

CUSTOM = ("quiz.completed",)  # declared in a catalogue: a feature before it is ever seen


def _days(now_ms: int, then_ms: int | None) -> float:
    return NEVER if then_ms is None else (now_ms - then_ms) / DAY_MS


def from_profile(profile: Profile, now_ms: int) -> dict[str, Any]:
    """The features as the profile the API shows states them, one by one."""
    out: dict[str, Any] = {}
    for event_type, counts in profile.counts.items():
        name = event_type.replace(".", "_")
        out[f"{name}_total"] = counts.total
        out[f"days_since_{name}"] = _days(now_ms, counts.last_at_ms)
        out.update({f"{name}_{w.name}": counts.windows[w.name] for w in WINDOWS})
    views = Counter(
        str(e.properties["item_id"])
        for e in profile.recent
        if "item_id" in e.properties and e.type == "product_view"
    )
    return out | {
        "stage": profile.stage,
        "is_known": profile.kind == "customer",
        "orders": profile.orders,
        "revenue": profile.revenue,
        **{
            f"purchased_{w}": "purchase" in profile.counts and profile.counts["purchase"].windows[w] > 0
            for w in ("24h", "7d", "30d")
        },
        "cart_items": len(profile.cart.lines),
        "cart_quantity": profile.cart.quantity,
        "cart_value": profile.cart.value,
        "days_since_cart_change": _days(now_ms, profile.cart.changed_at_ms),
        "days_since_first_seen": _days(now_ms, profile.first_seen_ms),
        "days_since_last_seen": _days(now_ms, profile.last_seen_ms),
        "articles_read": frozenset(
            str(e.properties.get("article_id", e.properties.get("page")))
            for e in profile.recent
            if e.type == "faq_view" and ("article_id" in e.properties or "page" in e.properties)
        ),
        "viewed_items": frozenset(views),
        "top_item_views": max(views.values(), default=0),
        "cart_item_ids": frozenset(line.item_id for line in profile.cart.lines),
        "consent": {channel: c.granted for channel, c in profile.consent.items()},
        "attributes": profile.attributes,
    }


def _events(rng: random.Random, clock: Clock, customer: str) -> list[Event]:
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("page_view", {"page": "/"}),
        ("product_view", {"item_id": f"sku-{rng.randint(1, 4)}"}),
        ("faq_view", {"article_id": rng.choice(["returns", "delivery"])}),
        ("faq_view", {"page": "/help/sizes"}),
        ("search", {"query": "rain jacket"}),
        (
            "add_to_cart",
            {"item_id": f"sku-{rng.randint(1, 4)}", "price": rng.choice([9.99, 25.0]), "quantity": 2},
        ),
        ("add_to_cart", {"item_id": "sku-9"}),  # no price
        ("remove_from_cart", {"item_id": "sku-1"}),
        ("checkout_started", {}),
        ("purchase", {"order_id": f"o-{rng.random()}", "revenue": 42.5}),
        ("consent", {"channel": rng.choice(["email", "sms"]), "granted": rng.random() < 0.5}),
        ("unsubscribe", {}),
        ("attributes", {"tier": rng.choice(["gold", "silver"]), "score": rng.randint(0, 9)}),
        ("signup", {}),
        ("email_click", {}),
        ("quiz.completed", {}),
        ("loyalty.points", {}),  # a custom type no catalogue declared
    ]
    out = []
    for _ in range(rng.randint(1, 30)):
        event_type, props = rng.choice(kinds)
        ago_ms = rng.choice([0, 60_000, 3_600_000, 3 * DAY_MS, 20 * DAY_MS, 120 * DAY_MS])
        out.append(Event(event_type, int(clock.now * 1000) - ago_ms, customer_id=customer, properties=props))
    return out


async def test_the_features_agree_with_the_profile_the_api_shows(store: ProfileStore, clock: Clock) -> None:
    rng = random.Random(11)
    seen = Counter[str]()
    for n in range(60):
        customer = f"c-{n}"
        await store.ingest(_events(rng, clock, customer))
        read = await store.apply_and_read(k.customer(customer), [])
        profile = await store.profile(customer)
        assert profile is not None
        now_ms = store.now_ms()
        got = features(read.raw, now_ms, CUSTOM, known=True, rules=StageRules())
        expected = from_profile(profile, now_ms)
        assert {name: got[name] for name in expected} == expected, customer
        never = features(None, now_ms, CUSTOM)  # what no event of a type gives
        rest = [name for name in got if name not in expected]
        assert {name: got[name] for name in rest} == {name: never[name] for name in rest}
        # What the vector and the log read of it, by the names it touched, is what all of them give.
        untouched = [name for name in got if name not in got.touched]
        assert {name: got[name] for name in untouched} == {name: never[name] for name in untouched}
        assert vector(got, {}, "web.home", now_ms) == vector(dict(got), {}, "web.home", now_ms)
        assert _logged_features(got) == _logged_features(dict(got))
        seen.update(
            {"stage=" + got["stage"], f"cart={bool(got['cart_items'])}", f"consent={bool(got['consent'])}"}
        )
    assert len([s for s in seen if s.startswith("stage=")]) >= 4, seen  # the profiles reach most stages
    assert seen["cart=True"], seen
    assert seen["cart=False"], seen
    assert seen["consent=True"], seen


async def test_an_anonymous_visitor_and_nobody(store: ProfileStore, clock: Clock) -> None:
    await store.ingest([Event("page_view", int(clock.now * 1000), anonymous_id="a-1")])
    read = await store.apply_and_read(k.anonymous("a-1"), [])
    assert read.keys.kind is IdKind.ANONYMOUS
    assert features(read.raw, store.now_ms(), known=False)["is_known"] is False
    assert features(read.raw, store.now_ms(), known=False)["page_view_total"] == 1
    nobody = await store.apply_and_read(k.customer("c-never"), [])
    assert not nobody.raw.exists
    assert features(nobody.raw, store.now_ms()) == features(None, store.now_ms())
