"""The store against a real redis-server: scripts, windows, cart, dedupe, TTLs, linking, erasure."""

from __future__ import annotations

import random

import pytest
import redis

from feature_store import Event, IdentityConflict, IdKind, ProfileStore, StoreConfig, StoreUnavailable
from feature_store import keys as k
from feature_store.profile import RawProfile, decode
from feature_store.store import CHUNK_EVENTS, Erased
from tests.conftest import Clock

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def ev(clock: Clock, event_type: str, seconds_ago: float = 0, **fields: object) -> Event:
    props = fields.pop("props", {})
    return Event(
        type=event_type,
        time_ms=int((clock.now - seconds_ago) * 1000),
        properties=props,  # type: ignore[arg-type]
        customer_id=fields.pop("customer_id", "c-1"),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


async def counts(store: ProfileStore, event_type: str, customer: str = "c-1") -> dict[str, int]:
    profile = await store.profile(customer)
    assert profile is not None
    c = profile.counts[event_type]
    return {"total": c.total, **c.windows}


async def test_late_events_land_in_the_windows_of_their_own_time(store: ProfileStore, clock: Clock) -> None:
    await store.ingest(
        [ev(clock, "page_view"), ev(clock, "page_view", 2 * HOUR), ev(clock, "page_view", 31 * DAY)]
    )
    assert await counts(store, "page_view") == {"total": 3, "30m": 1, "24h": 2, "7d": 2, "30d": 2}
    profile = await store.profile("c-1")
    assert profile is not None
    assert profile.first_seen_ms == int((clock.now - 31 * DAY) * 1000)
    assert profile.last_seen_ms == int(clock.now * 1000)


async def test_windows_slide_as_time_passes(store: ProfileStore, clock: Clock) -> None:
    await store.ingest([ev(clock, "faq_view"), ev(clock, "faq_view")])
    clock.advance(32 * MINUTE)
    assert await counts(store, "faq_view") == {"total": 2, "30m": 0, "24h": 2, "7d": 2, "30d": 2}
    clock.advance(2 * DAY)
    await store.ingest([ev(clock, "faq_view")])
    assert await counts(store, "faq_view") == {"total": 3, "30m": 1, "24h": 1, "7d": 3, "30d": 3}


async def test_an_event_counts_in_one_bucket_and_stale_buckets_are_dropped(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    windows = k.customer("c-1").windows
    await store.ingest([ev(clock, "page_view")])
    minute = int(clock.now * 1000) // 60_000
    assert raw_redis.hgetall(windows) == {f"M{minute}:page_view": "1"}
    clock.advance(40 * DAY)
    await store.ingest([ev(clock, "page_view")])
    assert raw_redis.hgetall(windows) == {f"M{minute + 40 * 24 * 60}:page_view": "1"}


async def test_a_bucket_that_left_its_window_is_folded_into_the_next_window_that_holds_it(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    windows = k.customer("c-1").windows
    clock.now = clock.now // 86_400 * 86_400 + 10 * HOUR + 5  # 10:00:05 UTC: hours and minutes line up
    await store.ingest([ev(clock, "page_view"), ev(clock, "page_view", 2), ev(clock, "faq_view")])
    hour, minute = int(clock.now) // 3600, int(clock.now) // 60
    clock.advance(45 * MINUTE)
    await store.ingest([ev(clock, "page_view")])
    assert raw_redis.hgetall(windows) == {
        f"H{hour}:page_view": "2",
        f"H{hour}:faq_view": "1",
        f"M{minute + 45}:page_view": "1",
    }
    clock.advance(2 * DAY)
    await store.ingest([ev(clock, "search")])
    fields = raw_redis.hgetall(windows)
    assert fields == {
        f"Q{hour // 6}:page_view": "3",
        f"Q{hour // 6}:faq_view": "1",
        f"M{minute + 45 + 2 * 24 * 60}:search": "1",
    }


async def test_a_bucket_folded_at_the_edge_of_a_window_still_counts_in_it(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    clock.now = clock.now // 86_400 * 86_400 + 10 * HOUR + 5
    await store.ingest([ev(clock, "page_view")])
    hour = int(clock.now) // 3600
    clock.advance(24 * HOUR)  # its hour is now the oldest the 24-hour window counts
    await store.ingest([ev(clock, "faq_view")])
    assert f"H{hour}:page_view" in raw_redis.hkeys(k.customer("c-1").windows)
    assert await counts(store, "page_view") == {"total": 1, "30m": 0, "24h": 1, "7d": 1, "30d": 1}


async def test_folded_buckets_count_as_every_window_did(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    # Events of every age, arriving over seven weeks at uneven gaps, read after every arrival: each count
    # is the number of events whose bucket in that window is within it, whether or not their buckets were
    # folded by then (a fold happens only when events arrive, at most once a minute).
    rng = random.Random(7)
    windows = {"30m": (60, 30), "24h": (3600, 24), "7d": (21_600, 28), "30d": (86_400, 30)}
    times: list[int] = []
    for step in range(120):
        clock.advance(rng.choice([0.5, 20, 5 * MINUTE, 40 * MINUTE, 3 * HOUR, 13 * HOUR, 2 * DAY]))
        batch = []
        for n in range(rng.randint(1, 3)):
            age = rng.choice([0, 10, 45 * MINUTE, 5 * HOUR, 3 * DAY, 20 * DAY, 35 * DAY])
            batch.append(ev(clock, "page_view", age, event_id=f"e-{step}-{n}"))
            times.append(int((clock.now - age) * 1000))
        await store.ingest(batch)
        now_ms = int(clock.now * 1000)
        expected = {
            name: sum(1 for t in times if t // (size * 1000) >= now_ms // (size * 1000) - buckets)
            for name, (size, buckets) in windows.items()
        }
        assert await counts(store, "page_view") == {"total": len(times), **expected}, step
    assert raw_redis.hlen(k.customer("c-1").windows) < 40  # the folds keep it to a few buckets per window


async def test_buckets_written_before_the_windows_nested_count_until_they_leave_their_window(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    # A profile written by the earlier layout: each event in a bucket of every window, codes in lower case.
    await store.ingest([ev(clock, "page_view")])
    earlier = int((clock.now - 2 * HOUR) * 1000)
    legacy = {
        f"{code}{earlier // ms}:page_view": "1"
        for code, ms in (("m", 60_000), ("h", 3_600_000), ("q", 21_600_000), ("d", 86_400_000))
    }
    raw_redis.hset(k.customer("c-1").windows, mapping=legacy)
    assert await counts(store, "page_view") == {"total": 1, "30m": 1, "24h": 2, "7d": 2, "30d": 2}
    clock.advance(3 * DAY)
    await store.ingest([ev(clock, "page_view")])
    assert await counts(store, "page_view") == {"total": 2, "30m": 1, "24h": 1, "7d": 3, "30d": 3}
    left = raw_redis.hkeys(k.customer("c-1").windows)
    assert sorted(f[0] for f in left if f[0].islower()) == ["d", "q"]  # the minute and hour buckets left
    clock.advance(40 * DAY)
    await store.ingest([ev(clock, "page_view")])
    assert all(f[0].isupper() for f in raw_redis.hkeys(k.customer("c-1").windows))


async def test_cart_through_add_remove_checkout_and_purchase(store: ProfileStore, clock: Clock) -> None:
    await store.ingest(
        [
            ev(clock, "add_to_cart", 50, props={"item_id": "a", "price": 10.0}),
            ev(clock, "add_to_cart", 40, props={"item_id": "a", "quantity": 2}),
            ev(clock, "add_to_cart", 30, props={"item_id": "b", "price": 5.5, "quantity": 3}),
            ev(clock, "remove_from_cart", 20, props={"item_id": "b", "quantity": 1}),
            ev(clock, "add_to_cart", 15, props={"item_id": "c", "price": 1.0}),
            ev(clock, "remove_from_cart", 10, props={"item_id": "c"}),
            ev(clock, "checkout_started", 5),
        ]
    )
    profile = await store.profile("c-1")
    assert profile is not None
    assert {line.item_id: line.quantity for line in profile.cart.lines} == {"a": 3, "b": 2}
    assert profile.cart.value == 41.0
    assert profile.stage == "purchase"
    await store.ingest([ev(clock, "purchase", 0, props={"order_id": "o-1"})])
    profile = await store.profile("c-1")
    assert profile is not None
    assert profile.cart.lines == ()
    assert profile.orders == 1
    assert profile.revenue == 41.0, "without revenue, the cart's value is the revenue"
    assert profile.stage == "retention"


async def test_a_late_cart_change_from_before_the_purchase_is_ignored(
    store: ProfileStore, clock: Clock
) -> None:
    await store.ingest([ev(clock, "purchase", 10, props={"revenue": 20})])
    await store.ingest([ev(clock, "add_to_cart", 60, props={"item_id": "old"})])
    await store.ingest([ev(clock, "add_to_cart", 0, props={"item_id": "new"})])
    profile = await store.profile("c-1")
    assert profile is not None
    assert [line.item_id for line in profile.cart.lines] == ["new"]


async def test_purchase_of_some_items_leaves_the_rest(store: ProfileStore, clock: Clock) -> None:
    await store.ingest(
        [
            ev(clock, "add_to_cart", 20, props={"item_id": "a", "price": 1.0}),
            ev(clock, "add_to_cart", 20, props={"item_id": "b", "price": 2.0}),
            ev(clock, "purchase", 10, props={"item_ids": ["a"], "revenue": 1.0}),
        ]
    )
    profile = await store.profile("c-1")
    assert profile is not None
    assert [line.item_id for line in profile.cart.lines] == ["b"]


async def test_consent_keeps_the_latest_event_time_whatever_the_arrival_order(
    store: ProfileStore, clock: Clock
) -> None:
    await store.ingest([ev(clock, "unsubscribe", 10, props={"channel": "email"})])
    await store.ingest([ev(clock, "consent", 60, props={"channel": "email", "granted": True})])
    await store.ingest([ev(clock, "consent", 0, props={"channel": "sms", "granted": True})])
    profile = await store.profile("c-1")
    assert profile is not None
    assert profile.consent["email"].granted is False
    assert profile.consent["sms"].granted is True


async def test_attributes_keep_the_latest_value(store: ProfileStore, clock: Clock) -> None:
    await store.ingest([ev(clock, "attributes", 0, props={"tier": "gold", "tags": ["a", "b"], "score": 1.5})])
    await store.ingest([ev(clock, "attributes", 60, props={"tier": "bronze", "city": "Lyon"})])
    profile = await store.profile("c-1")
    assert profile is not None
    assert profile.attributes == {"tier": "gold", "tags": ["a", "b"], "score": 1.5, "city": "Lyon"}


async def test_recent_events_keep_the_newest_twenty_by_event_time(store: ProfileStore, clock: Clock) -> None:
    await store.ingest([ev(clock, "faq_view", i, props={"article_id": f"art-{i}"}) for i in range(25)])
    await store.ingest([ev(clock, "faq_view", 100, props={"article_id": "late"})])
    profile = await store.profile("c-1")
    assert profile is not None
    assert [e.properties["article_id"] for e in profile.recent] == [f"art-{i}" for i in range(20)]


async def test_recent_events_read_back_newest_first_and_same_time_ones_in_the_sets_order(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    """apply.lua hands the recent events back as one JSON array; its order is the one profile.py gives
    the sorted set's pairs (the link's read): by time, newest first, ties as the set orders them."""
    times = [0, 0, 30, 30, 30, 60, 0, 90]
    await store.ingest(
        [
            ev(clock, "faq_view", s, props={"article_id": f"a-{i}"}, event_id=f"e-{i}")
            for i, s in enumerate(times)
        ]
    )
    profile = await store.profile("c-1")
    assert profile is not None
    pairs = tuple((m, float(score)) for m, score in raw_redis.zrange("nba:{c:c-1}:r", 0, -1, withscores=True))
    from_pairs = decode(RawProfile(profile={"first": "1"}, recent=pairs), id="c-1", kind="customer", now_ms=0)
    assert [e.properties["article_id"] for e in profile.recent] == [
        e.properties["article_id"] for e in from_pairs.recent
    ]
    assert [e.time_ms for e in profile.recent] == sorted((e.time_ms for e in profile.recent), reverse=True)
    assert len({e.time_ms for e in profile.recent}) == 4  # ties among them


async def test_event_ids_dedupe_within_the_window_and_not_after(
    redis_url: str, clock: Clock, raw_redis: redis.Redis
) -> None:
    store = ProfileStore.connect(redis_url, StoreConfig(dedupe_window_ms=24 * 3_600_000), clock=clock)
    try:
        first = await store.ingest(
            [ev(clock, "page_view", event_id="e-1"), ev(clock, "page_view", event_id="e-1")]
        )
        assert (first.accepted, first.duplicates) == (1, 1)
        clock.advance(23 * HOUR)
        again = await store.ingest([ev(clock, "page_view", event_id="e-1")])
        assert (again.accepted, again.duplicates) == (0, 1)
        clock.advance(2 * HOUR)
        later = await store.ingest([ev(clock, "page_view", event_id="e-2")])
        assert raw_redis.zscore(k.customer("c-1").dedupe, "e:e-1") is None, "pruned after the window"
        assert (later.accepted, later.duplicates) == (1, 0)
        assert (await counts(store, "page_view"))["total"] == 2
    finally:
        await store.aclose()


async def test_an_event_id_older_than_the_window_is_new_before_it_is_pruned(
    store: ProfileStore, clock: Clock
) -> None:
    """Seen ids are pruned at most once a minute, so one past the window may still be stored: it counts as
    new all the same."""
    await store.ingest([ev(clock, "page_view", event_id="e-1")])
    clock.advance(23 * HOUR)
    assert (await store.ingest([ev(clock, "page_view", event_id="e-1")])).duplicates == 1
    clock.advance(2 * HOUR)
    again = await store.ingest([ev(clock, "page_view", event_id="e-1") for _ in range(2)])
    assert (again.accepted, again.duplicates) == (1, 1)
    assert (await counts(store, "page_view"))["total"] == 2


async def test_events_are_applied_once_after_redis_lost_its_scripts(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    """A restarted Redis has no scripts: every call of the batch answers NOSCRIPT (and ran nothing), the
    store loads the script and sends them again."""
    await store.ingest([ev(clock, "page_view")])
    raw_redis.script_flush()
    result = await store.ingest([ev(clock, "page_view", customer_id=f"c-{i}") for i in range(1, 4)])
    assert (result.accepted, result.duplicates) == (3, 0)
    assert (await counts(store, "page_view"))["total"] == 2


async def test_a_repeated_order_id_is_one_order(store: ProfileStore, clock: Clock) -> None:
    result = await store.ingest(
        [
            ev(clock, "purchase", props={"order_id": "o-9", "revenue": 30}),
            ev(clock, "purchase", props={"order_id": "o-9", "revenue": 30}),
        ]
    )
    assert (result.accepted, result.duplicates) == (1, 1)
    profile = await store.profile("c-1")
    assert profile is not None
    assert (profile.orders, profile.revenue) == (1, 30.0)


async def test_every_key_expires_after_the_inactivity_period(
    redis_url: str, clock: Clock, raw_redis: redis.Redis
) -> None:
    ttl_ms = 400 * 86_400_000
    store = ProfileStore.connect(redis_url, StoreConfig(profile_ttl_ms=ttl_ms), clock=clock)
    try:
        await store.ingest(
            [
                ev(clock, "add_to_cart", props={"item_id": "a"}, event_id="e-1"),
                ev(clock, "page_view", anonymous_id="v-1", customer_id=None),
            ]
        )
        await store.link("v-1", "c-1")
        keys = raw_redis.keys("nba:*")
        assert keys, "something was written"
        for key in keys:
            ttl = raw_redis.pttl(key)
            assert ttl_ms - 60_000 < ttl <= ttl_ms, (key, ttl)
    finally:
        await store.aclose()


@pytest.mark.parametrize("first", [True, False], ids=["first-call", "between-renewals"])
async def test_the_keys_a_call_creates_expire(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis, first: bool
) -> None:
    """The expiry of every key is renewed at most once a minute per profile. A profile's first call gives
    one to what it wrote, not to all eight keys; a key first written in between two renewals (here all
    but the profile and its recent events) gets its expiry when it is written."""
    if not first:
        clock.now = (clock.now // MINUTE + 1) * MINUTE  # the start of a minute: the next calls stay in it
        await store.ingest([ev(clock, "page_view", 40 * DAY)])  # older than every window: no bucket
        clock.advance(5)
    await store.ingest(
        [
            ev(clock, "page_view", event_id="e-1"),
            ev(clock, "add_to_cart", props={"item_id": "a", "price": 2.0}),
            ev(clock, "purchase", props={"item_ids": ["b"], "order_id": "o-1"}),
        ]
    )
    ttl_ms = StoreConfig().profile_ttl_ms
    written = raw_redis.keys("nba:{c:c-1}:*")
    assert sorted(written) == sorted(k.customer("c-1").data_keys()[i] for i in (0, 1, 2, 3, 4, 7))
    for key in written:
        assert ttl_ms - 60_000 < raw_redis.pttl(key) <= ttl_ms, key


async def test_a_batch_of_many_attributes_for_one_profile_applies(store: ProfileStore, clock: Clock) -> None:
    """More profile fields than one Lua call can take as arguments (unpack() stops at a few thousand)."""
    events = [ev(clock, "attributes", props={f"a{i}_{j}": j for j in range(64)}) for i in range(150)]
    assert (await store.ingest(events)).accepted == 150
    profile = await store.profile("c-1")
    assert profile is not None
    assert len(profile.attributes) == 150 * 64
    assert profile.attributes["a149_63"] == 63


async def test_linking_merges_the_visitor_and_later_events_land_on_the_customer(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    await store.ingest(
        [
            ev(clock, "product_view", HOUR, anonymous_id="v-1", customer_id=None, props={"item_id": "a"}),
            ev(clock, "add_to_cart", 60, anonymous_id="v-1", customer_id=None, props={"item_id": "a"}),
            ev(clock, "page_view", 30, event_id="e-1"),
        ]
    )
    assert await store.link("v-1", "c-1") is True
    profile = await store.profile("c-1")
    assert profile is not None
    assert profile.anonymous_ids == ("v-1",)
    assert [e.type for e in profile.recent] == ["page_view", "add_to_cart", "product_view"]
    assert [line.item_id for line in profile.cart.lines] == ["a"]
    assert not raw_redis.exists(*k.anonymous("v-1").data_keys()), "the visitor's own data is gone"

    result = await store.ingest(
        [ev(clock, "add_to_cart", anonymous_id="v-1", customer_id=None, props={"item_id": "b"})]
    )
    assert result.accepted == 1
    via_visitor = await store.profile("v-1", IdKind.ANONYMOUS)
    assert via_visitor is not None
    assert via_visitor.id == "c-1"
    assert {line.item_id for line in via_visitor.cart.lines} == {"a", "b"}

    assert await store.link("v-1", "c-1") is False, "a repeat merges nothing"
    assert (await counts(store, "add_to_cart"))["total"] == 2
    with pytest.raises(IdentityConflict):
        await store.link("v-1", "c-2")


async def test_a_long_batch_for_a_linked_visitor_lands_on_the_customer_once(
    store: ProfileStore, clock: Clock
) -> None:
    """More events than one script call takes (CHUNK_EVENTS), without ids: every chunk is redirected, and
    each event is applied to the customer once."""
    await store.ingest([ev(clock, "page_view", anonymous_id="v-1", customer_id=None)])
    assert await store.link("v-1", "c-1") is True
    batch = [ev(clock, "page_view", anonymous_id="v-1", customer_id=None) for _ in range(CHUNK_EVENTS + 50)]
    assert (await store.ingest(batch)).accepted == CHUNK_EVENTS + 50
    assert (await counts(store, "page_view"))["total"] == 1 + CHUNK_EVENTS + 50


async def test_linked_visitors_among_other_customers_of_one_call_land_on_their_customers(
    store: ProfileStore, clock: Clock
) -> None:
    for visitor, customer in (("v-1", "c-1"), ("v-2", "c-2")):
        await store.ingest([ev(clock, "page_view", anonymous_id=visitor, customer_id=None)])
        assert await store.link(visitor, customer) is True
    batch = [
        ev(clock, "faq_view", customer_id="c-3"),
        ev(clock, "faq_view", anonymous_id="v-2", customer_id=None),
        ev(clock, "faq_view", customer_id="c-4"),
        ev(clock, "faq_view", anonymous_id="v-1", customer_id=None),
        ev(clock, "faq_view", anonymous_id="v-1", customer_id=None),
        ev(clock, "faq_view", customer_id="c-5"),
    ]
    assert (await store.ingest(batch)).accepted == 6
    expected = {"c-1": 2, "c-2": 1, "c-3": 1, "c-4": 1, "c-5": 1}
    assert {c: (await counts(store, "faq_view", c))["total"] for c in expected} == expected


async def test_an_interrupted_link_completes_on_retry_without_double_counting(
    store: ProfileStore, clock: Clock
) -> None:
    await store.ingest([ev(clock, "page_view", anonymous_id="v-1", customer_id=None)])
    await store.ingest([ev(clock, "page_view")])
    # First step only, as if the service died right after it: the alias points at c-1, data not merged.
    await store._link(keys=k.anonymous("v-1").script_keys(), args=["c-1", 10_000_000])
    assert (await counts(store, "page_view"))["total"] == 1
    assert await store.link("v-1", "c-1") is True
    assert await store.link("v-1", "c-1") is False
    assert (await counts(store, "page_view"))["total"] == 2


async def test_erase_removes_the_customer_and_every_linked_visitor(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    await store.ingest([ev(clock, "page_view", anonymous_id=v, customer_id=None) for v in ("v-1", "v-2")])
    await store.ingest([ev(clock, "page_view", customer_id="c-other")])
    await store.link("v-1", "c-1")
    await store.link("v-2", "c-1")
    erased = await store.erase("v-2", IdKind.ANONYMOUS)
    assert erased == Erased(existed=True, customer_id="c-1"), "through a linked id, the customer goes"
    assert await store.profile("c-1") is None
    assert await store.profile("v-1", IdKind.ANONYMOUS) is None
    assert sorted(raw_redis.keys("nba:*")) == sorted(
        key for key in k.customer("c-other").script_keys() if raw_redis.exists(key)
    )
    assert await store.erase("c-1") == Erased(existed=False, customer_id="c-1")
    # A later event under a linked visitor id starts a new anonymous profile: the link was erased too.
    await store.ingest([ev(clock, "page_view", anonymous_id="v-1", customer_id=None)])
    visitor = await store.profile("v-1", IdKind.ANONYMOUS)
    assert visitor is not None
    assert visitor.kind == "anonymous"
    # A visitor linked to no one is erased alone: there is no customer to erase with it.
    assert await store.erase("v-1", IdKind.ANONYMOUS) == Erased(existed=True, customer_id=None)


async def test_a_link_is_renewed_by_use_and_a_relink_after_it_expired_merges_again(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    visitor = {"anonymous_id": "v-1", "customer_id": None}
    await store.ingest([ev(clock, "page_view", **visitor)])
    await store.link("v-1", "c-1")
    alias = k.anonymous("v-1").alias
    raw_redis.pexpire(alias, 1000)
    await store.ingest([ev(clock, "page_view", **visitor)])
    assert raw_redis.pttl(alias) > 10_000, "an event through the link renews it"

    # The link expires (the visitor stayed away for the whole inactivity period) while the customer,
    # still active, keeps listing the visitor. The visitor comes back, browses, and logs in again.
    raw_redis.delete(alias)
    await store.ingest([ev(clock, "product_view", **visitor), ev(clock, "product_view", **visitor)])
    assert await store.link("v-1", "c-1") is True
    assert (await counts(store, "product_view"))["total"] == 2
    assert (await counts(store, "page_view"))["total"] == 2


async def test_a_merge_does_not_bring_back_what_a_later_purchase_took(
    store: ProfileStore, clock: Clock
) -> None:
    visitor = {"anonymous_id": "v-1", "customer_id": None}
    await store.ingest([ev(clock, "add_to_cart", 60, props={"item_id": "old"}, **visitor)])
    await store.ingest([ev(clock, "purchase", 30, props={"revenue": 5})])
    await store.ingest([ev(clock, "add_to_cart", 10, props={"item_id": "new"}, **visitor)])
    await store.link("v-1", "c-1")
    profile = await store.profile("c-1")
    assert profile is not None
    assert [line.item_id for line in profile.cart.lines] == ["new"]


async def test_a_partial_purchase_without_revenue_earns_the_value_of_what_was_bought(
    store: ProfileStore, clock: Clock
) -> None:
    await store.ingest(
        [
            ev(clock, "add_to_cart", 20, props={"item_id": "a", "price": 10.0, "quantity": 2}),
            ev(clock, "add_to_cart", 20, props={"item_id": "b", "price": 5.0}),
            ev(clock, "purchase", 10, props={"item_ids": ["a"]}),
        ]
    )
    profile = await store.profile("c-1")
    assert profile is not None
    assert profile.revenue == 20.0
    assert profile.cart.value == 5.0


async def test_a_redis_that_refuses_writes_is_unavailable_and_other_errors_go_through(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    """Redis out of memory refuses writes: the store is unavailable (HTTP 503, for the caller to retry).
    An error of the data is not hidden as one."""
    raw_redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(StoreUnavailable, match="refused the write"):
            await store.ingest([ev(clock, "page_view")])
    finally:
        raw_redis.config_set("maxmemory", 0)
    raw_redis.set(k.customer("c-2").cart, "not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await store.ingest([ev(clock, "add_to_cart", customer_id="c-2", props={"item_id": "a"})])
