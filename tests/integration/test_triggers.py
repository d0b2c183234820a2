"""Timed triggers against a real redis-server: what starts, pushes out and cancels an instance, claiming
it exactly once, and firing it through the whole app on a moved clock (no sleeping).

The deliveries the firings enqueue are checked in the outbox here; that they reach a receiver, signed
and retried, is tests/integration/test_delivery.py's, and one end-to-end run to a receiver is below.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager
from standardwebhooks.webhooks import Webhook

from app.main import create_app
from app.services import Services, trigger_ops
from app.settings import Settings
from app.triggers import TriggerWorker, fired_decision_id
from feature_store import Event, Ingested, ProfileStore
from feature_store import keys as store_keys
from feature_store.keys import DECISION_LOG, TRIGGERS_DUE, TRIGGERS_FIRING
from feature_store.outbox import message_id
from feature_store.triggers import Firing, TriggerOp
from tests.conftest import AppFactory, Clock
from tests.integration.test_delivery import SECRET, Receiver
from tests.integration.test_learner import until

FIXTURE = Path(__file__).parents[1] / "fixtures" / "catalogue"
MINUTE = 60.0
DAY_MS = 86_400_000
TRIGGERS = """
destinations:
  platform: {url: "http://127.0.0.1:9/unused", secret: NBA_TEST_PLATFORM_SECRET}
triggers:
  - id: cart_abandonment
    start: add_to_cart
    delay: 30m
    cancel: [checkout_started, purchase]
    condition: "profile.cart_items > 0"
    placement: email.cart_recovery
    late: 6h
"""


def catalogue(tmp_path: Path, *, share: float = 0.0, url: str = "http://127.0.0.1:9/unused") -> Path:
    """The fixture catalogue, with the cart trigger, and the cart email delivered to a destination."""
    folder = tmp_path / "catalogue"
    shutil.copytree(FIXTURE, folder)
    main = folder / "catalogue.yaml"
    text = main.read_text()
    text = text.replace(
        'holdout: {share: 0.0, seed: "test-seed"}', f'holdout: {{share: {share}, seed: "test-seed"}}'
    )
    delivered = (
        "    payload: {template: cart-1}\n    destination: platform\n    needs: [cart_items, cart_value]\n"
    )
    text = text.replace("    payload: {template: cart-1}\n", delivered)
    main.write_text(text)
    (folder / "triggers.yaml").write_text(TRIGGERS.replace("http://127.0.0.1:9/unused", url))
    return folder


def event(kind: str, customer: str, at_s: float, **properties: Any) -> Event:
    return Event(kind, int(at_s * 1000), customer_id=customer, properties=properties)


def op(start: bool, at_s: float, customer: str = "c-1", delay_ms: int = 30 * 60_000) -> TriggerOp:
    return TriggerOp(start, "cart_abandonment", f"c:{customer}", int(at_s * 1000), delay_ms)


# The schedule: start, push out, cancel ------------------------------------------------------------------


async def test_a_start_schedules_one_instance_and_a_later_start_pushes_it_out(
    store: ProfileStore, clock: Clock
) -> None:
    triggers = store.triggers()
    now = clock.now
    await triggers.schedule([op(True, now)], 0)
    assert await triggers.pending("c:c-1") == {"cart_abandonment": int(now * 1000) + 30 * 60_000}
    await triggers.schedule([op(True, now + 5 * MINUTE)], 0)
    await triggers.schedule([op(True, now + 1 * MINUTE)], 0)  # late: older than the one that set it
    assert await triggers.pending("c:c-1") == {"cart_abandonment": int((now + 35 * MINUTE) * 1000)}
    assert len(await triggers.pending()) == 1  # one instance per trigger and customer


async def test_a_cancel_removes_it_and_an_older_start_cannot_bring_it_back(
    store: ProfileStore, clock: Clock
) -> None:
    triggers = store.triggers()
    now = clock.now
    await triggers.schedule([op(True, now)], 0)
    await triggers.schedule([op(False, now + 10 * MINUTE)], 0)
    assert await triggers.pending("c:c-1") == {}
    # The same start again (a retried request), or a late one from before the cancel: still cancelled.
    await triggers.schedule([op(True, now), op(True, now + 9 * MINUTE)], 0)
    assert await triggers.pending("c:c-1") == {}
    # A cart add after the purchase starts a new instance.
    await triggers.schedule([op(True, now + 11 * MINUTE)], 0)
    assert await triggers.pending("c:c-1") == {"cart_abandonment": int((now + 41 * MINUTE) * 1000)}
    # A late cancel, older than the start that set the instance, leaves it.
    await triggers.schedule([op(False, now + 10.5 * MINUTE)], 0)
    assert "cart_abandonment" in await triggers.pending("c:c-1")


async def test_within_one_request_events_count_in_the_order_they_happened(
    store: ProfileStore, clock: Clock
) -> None:
    triggers = store.triggers()
    now = clock.now
    await triggers.schedule([op(False, now + 60, "c-a"), op(True, now, "c-a")], 0)  # added, then bought
    await triggers.schedule([op(True, now + 60, "c-b"), op(False, now, "c-b")], 0)  # bought, then added
    assert set(await triggers.pending()) == {"cart_abandonment|c:c-b"}


async def test_ops_sent_with_events_are_applied_once_after_redis_lost_its_scripts(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    """The schedule's script is called by its SHA1, as the events' is. A Redis that lost them answers
    NOSCRIPT to each and ran nothing: the store loads both and sends again what was refused, the events
    and the ops or the ops alone."""
    now = clock.now
    raw_redis.script_flush()
    assert await store.ingest([event("add_to_cart", "c-1", now, item_id="a")], [op(True, now)]) == Ingested(
        1, 0
    )
    raw_redis.script_flush()
    raw_redis.script_load(store._apply_src)  # the events' script known, the schedule's not
    later = event("add_to_cart", "c-2", now, item_id="a")
    assert await store.ingest([later], [op(True, now, "c-2")]) == Ingested(1, 0)
    assert set(await store.triggers().pending()) == {"cart_abandonment|c:c-1", "cart_abandonment|c:c-2"}
    for customer in ("c-1", "c-2"):
        profile = await store.profile(customer)
        assert profile is not None
        assert profile.counts["add_to_cart"].total == 1


def test_the_catalogue_says_which_events_start_and_cancel_what(tmp_path: Path) -> None:
    from feature_store.features import feature_names
    from policies.catalogue import load

    live = load(catalogue(tmp_path), feature_names())
    events = [
        event("add_to_cart", "c-1", 100.0, item_id="a"),
        event("purchase", "c-1", 200.0),
        event("page_view", "c-1", 300.0),
        Event("add_to_cart", 400_000, anonymous_id="v-1", properties={"item_id": "a"}),  # no one to reach
    ]
    assert trigger_ops(live, events) == [
        TriggerOp(True, "cart_abandonment", "c:c-1", 100_000, 30 * 60_000),
        TriggerOp(False, "cart_abandonment", "c:c-1", 200_000, 30 * 60_000),
    ]


# Claiming: once, and again after a lease runs out -------------------------------------------------------


async def test_a_due_instance_is_claimed_by_one_of_two_claimers_at_once(
    store: ProfileStore, redis_url: str, clock: Clock
) -> None:
    ops = [op(True, clock.now - 3600, f"c-{i}") for i in range(50)]
    await store.triggers().schedule(ops, 0)
    now_ms = int(clock.now * 1000)
    other = ProfileStore.connect(redis_url)
    try:
        one, two = await asyncio.gather(
            store.triggers().claim(now_ms, 30_000, 40), other.triggers().claim(now_ms, 30_000, 40)
        )
    finally:
        await other.aclose()
    assert len(one) + len(two) == 50
    assert not {f.member for f in one} & {f.member for f in two}
    assert await store.triggers().claim(now_ms, 30_000, 100) == []  # all held
    # A lease that ran out (its worker died) is claimed again; a finished one is gone.
    await store.triggers().done(one[0])
    again = await store.triggers().claim(now_ms + 30_001, 30_000, 100)
    assert len(again) == 49
    assert one[0] not in again


async def test_an_instance_not_yet_due_is_not_claimed(store: ProfileStore, clock: Clock) -> None:
    await store.triggers().schedule([op(True, clock.now)], 0)
    due_ms = int(clock.now * 1000) + 30 * 60_000
    assert await store.triggers().claim(due_ms - 1, 30_000, 10) == []
    [firing] = await store.triggers().claim(due_ms, 30_000, 10)
    assert firing == Firing("cart_abandonment", "c:c-1", due_ms)
    assert Firing.parse(Firing("t", "c:with|bar", 5).member) == Firing("t", "c:with|bar", 5)


async def test_due_times_survive_a_restart_of_redis_with_persistence(tmp_path: Path, clock: Clock) -> None:
    from feature_store.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "data", fsync="always").start()
    try:
        first = ProfileStore.connect(server.url, clock=clock)
        await first.triggers().schedule([op(True, clock.now)], 0)
        await first.aclose()
    finally:
        server.stop()
    server = EmbeddedRedis(tmp_path / "data", fsync="always").start()
    try:
        again = ProfileStore.connect(server.url, clock=clock)
        assert await again.triggers().pending("c:c-1") == {
            "cart_abandonment": int(clock.now * 1000) + 30 * 60_000
        }
        await again.aclose()
    finally:
        server.stop()


# Firing, through the app ---------------------------------------------------------------------------------


@asynccontextmanager
async def service(
    redis_url: str, clock: Clock, folder: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Services, TriggerWorker]]:
    """The app without its background tasks, and a trigger worker on its services, on the test's clock."""
    settings = Settings(_env_file=None, redis_url=redis_url, policies=folder, log_format="json")
    app = create_app(settings, clock=clock, watch=False)
    async with LifespanManager(app) as manager:
        services: Services = manager._state["services"]
        worker = TriggerWorker(services, services.store.triggers(), services.store.outbox(), clock=clock)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nba.test") as client:
            yield client, services, worker


async def send(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    answer = await client.post("/v1/events", json={"events": list(events)})
    assert answer.status_code == 202, answer.text


def cart_add(customer: str, item: str = "sku-1", price: float = 25.0) -> dict[str, Any]:
    return {"customer_id": customer, "type": "add_to_cart", "properties": {"item_id": item, "price": price}}


def consent(customer: str) -> dict[str, Any]:
    return {"customer_id": customer, "type": "consent", "properties": {"channel": "email", "granted": True}}


def contacts(raw_redis: redis.Redis, customer: str) -> list[str]:
    return list(raw_redis.zrange(store_keys.customer(customer).contacts, 0, -1))  # type: ignore[arg-type]


def decisions(raw_redis: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in raw_redis.xrange(DECISION_LOG)]  # type: ignore[union-attr]


async def test_a_cart_left_for_30_minutes_is_decided_for_and_its_email_enqueued(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"))
        clock.advance(30 * MINUTE - 1)
        assert await worker.round() == 0  # not yet
        clock.advance(1)
        assert await worker.round() == 1
        [logged] = decisions(raw_redis)
        assert json.loads(logged["context"]) == {"trigger": "cart_abandonment"}
        assert logged["placement"] == "email.cart_recovery"
        assert [a["action_id"] for a in json.loads(logged["actions"])] == ["cart_email"]
        due_ms = int((clock.now) * 1000)
        decision_id = fired_decision_id(Firing("cart_abandonment", "c:c-1", due_ms))
        assert logged["decision_id"] == decision_id
        message = await services.store.outbox().message(message_id(decision_id, "cart_email"))
        assert message is not None
        assert message.destination == "platform"
        body = json.loads(message.body)["data"]
        assert (body["customer_id"], body["action_id"], body["trigger"]) == (
            "c-1",
            "cart_email",
            "cart_abandonment",
        )
        assert body["profile"] == {"cart_items": 1, "cart_value": 25.0}
        assert body["payload"] == {"template": "cart-1"}
        # Not a contact until it is delivered: the contact policy has not counted it yet.
        assert contacts(raw_redis, "c-1") == []
        assert raw_redis.zcard(TRIGGERS_DUE) == raw_redis.zcard(TRIGGERS_FIRING) == 0


async def test_a_cart_bought_before_30_minutes_sends_nothing(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"))
        clock.advance(10 * MINUTE)
        await send(client, {"customer_id": "c-1", "type": "purchase", "properties": {"order_id": "o-1"}})
        clock.advance(30 * MINUTE)
        assert await worker.round() == 0
        assert decisions(raw_redis) == []
        assert (await services.store.outbox().counts()).due == 0


async def test_a_control_customer_gets_nothing_and_the_counterfactual_is_logged(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path, share=1.0)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"))
        clock.advance(30 * MINUTE)
        assert await worker.round() == 1
        [logged] = decisions(raw_redis)
        assert logged["group"] == "control"
        assert json.loads(logged["actions"]) == []
        assert [a["action_id"] for a in json.loads(logged["counterfactual"])] == ["cart_email"]
        assert (await services.store.outbox().counts()).due == 0


async def test_a_condition_that_no_longer_holds_decides_nothing(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, _, worker):
        await send(client, consent("c-1"), cart_add("c-1"))
        clock.advance(5 * MINUTE)
        await send(
            client, {"customer_id": "c-1", "type": "remove_from_cart", "properties": {"item_id": "sku-1"}}
        )
        clock.advance(25 * MINUTE)
        assert await worker.round() == 1  # claimed, then dropped: the cart is empty
        assert decisions(raw_redis) == []
        assert raw_redis.zcard(TRIGGERS_FIRING) == 0


async def test_a_trigger_due_while_the_service_was_down_fires_unless_too_late(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    folder = catalogue(tmp_path)
    async with service(redis_url, clock, folder) as (client, _, _):
        await send(client, consent("c-1"), cart_add("c-1"), consent("c-2"))
        clock.advance(60)
        await send(client, cart_add("c-2"))
    clock.advance(30 * MINUTE + 6 * 3600 - 30)  # down: c-1's is now 6 h late and a little over
    async with service(redis_url, clock, folder) as (_, _, worker):
        assert await worker.round() == 2
        [logged] = decisions(raw_redis)
        assert logged["customer"] == "c:c-2"  # 6 h less 30 s late: fired; c-1's dropped


async def test_a_worker_that_dies_after_deciding_leaves_one_decision_and_one_delivery(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"))
        clock.advance(30 * MINUTE)
        [firing] = await services.store.triggers().claim(int(clock.now * 1000), 30_000, 10)
        await worker.fire(firing)  # ... and dies before it is done
        clock.advance(31)  # the lease runs out
        # Another worker (a new process would have its own connection; the store is the same).
        other = TriggerWorker(services, services.store.triggers(), services.store.outbox(), clock=clock)
        assert await other.round() == 1
        assert len(decisions(raw_redis)) == 1
        assert (await services.store.outbox().counts()).due == 1
        assert raw_redis.zcard(TRIGGERS_FIRING) == 0


async def test_the_delivery_is_the_contact_that_the_contact_policy_counts(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"))
        clock.advance(30 * MINUTE)
        await worker.round()
        decision_id = fired_decision_id(Firing("cart_abandonment", "c:c-1", int(clock.now * 1000)))
        message = await services.store.outbox().message(message_id(decision_id, "cart_email"))
        assert message is not None
        await services.record_delivery(message)  # what the delivery worker calls on a 2xx
        assert contacts(raw_redis, "c-1") == [f"{decision_id}|cart_email|email|served"]
        # The fixture allows one email a day: a cart left again today is decided for, and gets nothing.
        await send(client, cart_add("c-1", "sku-2"))
        clock.advance(30 * MINUTE)
        assert await worker.round() == 1
        _, second = decisions(raw_redis)
        assert json.loads(second["actions"]) == []
        assert second["group"] == "treatment"


async def test_end_to_end_the_cart_email_reaches_the_platform_signed_and_counts_as_the_contact(
    make_client: AppFactory,
    raw_redis: redis.Redis,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole service with its background workers, and a real receiver on loopback: a cart left for
    30 minutes is emailed, a cart bought is not. The clock starts 30 minutes in the past, so that the
    signature's timestamp is now when the receiver verifies it."""
    monkeypatch.setenv("NBA_TEST_PLATFORM_SECRET", SECRET)
    clock.now = time.time() - 30 * MINUTE - 2
    async with Receiver() as receiver:
        folder = catalogue(tmp_path, url=receiver.url)
        async with make_client(policies=folder, trigger_poll_s=0.05, delivery_poll_s=0.05) as client:
            await send(client, consent("c-1"), cart_add("c-1"), consent("c-2"), cart_add("c-2"))
            clock.advance(60)
            await send(client, {"customer_id": "c-2", "type": "purchase", "properties": {"order_id": "o-2"}})
            clock.advance(30 * MINUTE)

            async def delivered() -> bool:
                return bool(receiver.requests and contacts(raw_redis, "c-1"))

            await until(delivered, 10, "the cart email is delivered and counted")  # a bound, not a benchmark
            await asyncio.sleep(0.3)  # room for a second, wrong delivery to show up
        [request] = receiver.requests
        body = Webhook(SECRET).verify(request.body, request.headers)
        assert body["data"]["customer_id"] == "c-1"
        assert body["data"]["action_id"] == "cart_email"
        assert body["data"]["profile"] == {"cart_items": 1, "cart_value": 25.0}
        [decision_id] = [d["decision_id"] for d in decisions(raw_redis)]
        assert contacts(raw_redis, "c-1") == [f"{decision_id}|cart_email|email|served"]


async def test_erasing_a_customer_forgets_their_pending_triggers(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"), consent("c-2"), cart_add("c-2"))
        assert (await client.delete("/v1/customers/c-1")).status_code == 204
        assert set(await services.store.triggers().pending()) == {"cart_abandonment|c:c-2"}
        clock.advance(30 * MINUTE)
        assert await worker.round() == 1
        assert [d["customer"] for d in decisions(raw_redis)] == ["c:c-2"]


async def test_erasing_through_a_linked_anonymous_id_forgets_the_customers_triggers_and_deliveries(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    """The erasure of the customer a visitor id is linked to is that customer's whole erasure: a trigger
    left pending would fire after it, and a delivery would carry their features to the platform."""
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        for customer in ("c-1", "c-2"):
            link = {"anonymous_id": f"v-{customer}", "customer_id": customer}
            assert (await client.post("/v1/identities", json=link)).status_code == 200
        await send(client, consent("c-1"), cart_add("c-1"), consent("c-2"), cart_add("c-2"))
        clock.advance(30 * MINUTE)
        assert await worker.round() == 2  # one delivery due for each
        await send(client, cart_add("c-1", "sku-2"), cart_add("c-2", "sku-2"))  # and a trigger pending
        outbox = services.store.outbox()
        assert (await outbox.counts()).due == 2
        erase = await client.delete("/v1/customers/v-c-1", params={"id_type": "anonymous"})
        assert erase.status_code == 204
        assert set(await services.store.triggers().pending()) == {"cart_abandonment|c:c-2"}
        assert (await outbox.counts()).due == 1
        [left] = [k for k in raw_redis.keys("nba:{o}:m:*")]
        assert raw_redis.hget(left, "customer") == "c:c-2"
        gone = await client.delete("/v1/customers/v-c-1", params={"id_type": "anonymous"})
        assert gone.status_code == 404


async def test_erasing_a_customer_erases_their_deliveries_not_yet_made(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services, worker):
        await send(client, consent("c-1"), cart_add("c-1"), consent("c-2"), cart_add("c-2"))
        clock.advance(30 * MINUTE)
        assert await worker.round() == 2
        outbox = services.store.outbox()
        assert (await outbox.counts()).due == 2
        assert (await client.delete("/v1/customers/c-1")).status_code == 204
        assert (await outbox.counts()).due == 1
        [left] = [k for k in raw_redis.keys("nba:{o}:m:*")]
        assert raw_redis.hget(left, "customer") == "c:c-2"
        assert not raw_redis.keys("nba:{o}:c:c:c-1")
