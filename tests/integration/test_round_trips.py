"""What each operation costs in Redis round trips, counted on the wire: every request the client sends to
redis-server goes out as one packed write on a connection (a pipeline is one write, and so is a call on
the hot path's shared connection), and the ``wire`` fixture counts those writes for every connection of
the process."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import hiredis
import httpx
import pytest
import redis
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from feature_store import Event, IdKind, ProfileStore
from feature_store.keys import KEYS_PER_PROFILE, TRIGGERS_DUE
from feature_store.multiplex import _Link
from feature_store.store import CHUNK_EVENTS, StoreConfig
from tests.conftest import AppFactory, Clock


class Wire:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    @property
    def sent(self) -> int:
        return len(self.writes)

    async def trips(self, operation: Awaitable[Any]) -> int:
        before = self.sent
        await operation
        return self.sent - before


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    wire = Wire()
    send = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        wire.writes.append(b"".join(command) if isinstance(command, list) else command)
        await send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    call = _Link.call

    async def counted_call(self: _Link, packed: bytes, count: int) -> list[Any]:
        wire.writes.append(packed)
        return await call(self, packed, count)

    monkeypatch.setattr(_Link, "call", counted_call)
    return wire


def page_view(clock: Clock, customer: str, **kw: Any) -> Event:
    return Event("page_view", int(clock.now * 1000), customer_id=customer, **kw)


async def test_one_event_is_one_round_trip(store: ProfileStore, clock: Clock, wire: Wire) -> None:
    await store.ping()  # open the connection first: what follows counts requests, not the handshake
    assert await wire.trips(store.ingest([page_view(clock, "c-1")])) == 1
    cart = Event("add_to_cart", int(clock.now * 1000), customer_id="c-1", properties={"item_id": "a"})
    assert await wire.trips(store.ingest([cart])) == 1


async def test_a_batch_of_1000_events_for_300_customers_is_one_round_trip(
    store: ProfileStore, clock: Clock, wire: Wire
) -> None:
    await store.ping()
    batch = [page_view(clock, f"c-{i % 300}", event_id=f"e-{i}") for i in range(1000)]
    assert await wire.trips(store.ingest(batch)) == 1
    profile = await store.profile("c-7")
    assert profile is not None
    assert profile.counts["page_view"].total == len([i for i in range(1000) if i % 300 == 7])


def script_calls(request: bytes) -> list[tuple[list[bytes], list[bytes]]]:
    """The ``apply.lua`` calls in one write: each one's keys and arguments."""
    reader = hiredis.Reader()
    reader.feed(request)
    calls = []
    while (command := reader.gets()) is not False:
        if command[0] == b"EVALSHA":
            count = int(command[2])
            calls.append((command[3 : 3 + count], command[3 + count :]))
    return calls


def events_in(args: list[bytes]) -> int:
    """How many events one call of ``apply.lua`` carries: after five head arguments, each profile's
    count of events and five arguments per event."""
    at, events = 5, 0
    while at < len(args):
        count = int(args[at])
        events += count
        at += 1 + 5 * count
    return events


def busy_batch(clock: Clock) -> list[Event]:
    """30 customers with 10 events each, 5 visitors with one, and a customer with 250."""
    batch = [page_view(clock, f"c-{i % 30}", event_id=f"e-{i}") for i in range(300)]
    batch += [Event("page_view", int(clock.now * 1000), anonymous_id=f"v-{i}") for i in range(5)]
    batch += [page_view(clock, "c-busy", event_id=f"b-{i}") for i in range(250)]
    return batch


async def test_a_script_call_applies_many_profiles_up_to_25_events(
    store: ProfileStore, clock: Clock, wire: Wire
) -> None:
    """On a single Redis any profiles share a call: a call costs Redis more than most events in it. A
    customer's events stay in one piece per call (two customers of 10 to a call, then the five
    visitors), and the busy customer's 250 take ten calls."""
    assert CHUNK_EVENTS == 25
    await store.ping()  # a pool connection, which the batch takes, opened first: its handshake is no call
    before = wire.sent
    batch = busy_batch(clock)
    assert (await store.ingest(batch)).accepted == len(batch)
    [request] = wire.writes[before:]
    calls = script_calls(request)
    assert [events_in(args) for _keys, args in calls] == [20] * 14 + [25] + [25] * 10
    assert len(calls[0][0]) == 2 * KEYS_PER_PROFILE
    assert len(calls[14][0]) == 7 * KEYS_PER_PROFILE
    profile = await store.profile("c-busy")
    assert profile is not None
    assert profile.counts["page_view"].total == 250
    profile = await store.profile("c-29")
    assert profile is not None
    assert profile.counts["page_view"].total == 10


async def test_calls_by_slot_keep_each_script_call_in_one_cluster_slot(
    redis_url: str, clock: Clock, wire: Wire
) -> None:
    """What Redis Cluster requires: every key of a call in one slot (profiles of one slot may share)."""
    store = ProfileStore.connect(redis_url, StoreConfig(calls_by_slot=True), clock=clock)
    try:
        await store.load_scripts()
        await store.ping()  # the pool connection that the batch takes, opened first
        batch = busy_batch(clock)
        before = wire.sent
        assert (await store.ingest(batch)).accepted == len(batch)
        [request] = wire.writes[before:]
        calls = script_calls(request)
        assert 30 + 5 + 250 // CHUNK_EVENTS >= len(calls) > 30
        for script_keys, args in calls:
            assert len({key_slot(key) for key in script_keys}) == 1, script_keys
            assert events_in(args) <= CHUNK_EVENTS
        profile = await store.profile("c-busy")
        assert profile is not None
        assert profile.counts["page_view"].total == 250
    finally:
        await store.aclose()


async def test_reading_a_profile_is_one_round_trip(store: ProfileStore, clock: Clock, wire: Wire) -> None:
    await store.ingest([page_view(clock, "c-1")])
    assert await wire.trips(store.profile("c-1")) == 1


async def test_a_linked_visitor_costs_one_more_round_trip(
    store: ProfileStore, clock: Clock, wire: Wire
) -> None:
    visitor = Event("page_view", int(clock.now * 1000), anonymous_id="v-1")
    await store.ingest([visitor])
    await store.link("v-1", "c-1")
    assert await wire.trips(store.ingest([visitor])) == 2
    assert await wire.trips(store.profile("v-1", IdKind.ANONYMOUS)) == 2


async def test_the_events_endpoint_costs_one_round_trip(make_client: AppFactory, wire: Wire) -> None:
    """Through the whole app: auth, validation, the service and the store."""
    async with make_client(watch=False) as client:  # no background task talks to Redis meanwhile
        assert (await client.get("/readyz")).status_code == 200
        before = wire.sent
        r = await client.post("/v1/events", json={"customer_id": "c-1", "type": "page_view"})
        assert r.status_code == 202
        assert wire.sent - before == 1
        before = wire.sent
        batch = {"events": [{"customer_id": f"c-{i}", "type": "page_view"} for i in range(500)]}
        r: httpx.Response = await client.post("/v1/events", json=batch)
        assert r.json() == {"accepted": 500, "duplicates": 0}
        assert wire.sent - before == 1


async def test_a_decision_with_its_event_costs_two_round_trips(make_client: AppFactory, wire: Wire) -> None:
    """One applies the page view and reads everything the decision needs; one records the decision."""
    from tests.api.test_decide_api import CATALOGUE

    async with make_client(policies=CATALOGUE, watch=False) as client:
        assert (await client.get("/readyz")).status_code == 200
        body = {
            "customer_id": "c-1",
            "placement": "web.product_page",
            "event": {"type": "page_view", "properties": {"page": "/p/sku-1"}},
            "context": {"device": "mobile"},
        }
        for _ in range(3):
            before = wire.sent
            r = await client.post("/v1/decide", json=body)
            assert r.status_code == 200
            assert r.json()["fallback"] is False
            assert wire.sent - before == 2


async def test_events_that_start_and_cancel_triggers_cost_no_more_round_trips(
    make_client: AppFactory, wire: Wire, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    """The trigger instances an event starts or cancels are written in the same round trip."""
    from tests.integration.test_triggers import cart_add, catalogue

    async with make_client(policies=catalogue(tmp_path), watch=False) as client:
        assert (await client.get("/readyz")).status_code == 200
        before = wire.sent
        r = await client.post("/v1/events", json=cart_add("c-1"))
        assert r.status_code == 202
        assert wire.sent - before == 1
        body = {"customer_id": "c-1", "placement": "email.cart_recovery", "event": cart_add("c-1", "sku-2")}
        del body["event"]["customer_id"]  # type: ignore[attr-defined]
        before = wire.sent
        r = await client.post("/v1/decide", json=body)
        assert r.status_code == 200
        assert r.json()["fallback"] is False
        assert wire.sent - before == 2
        assert raw_redis.zscore(TRIGGERS_DUE, "cart_abandonment|c:c-1") is not None  # started, and pushed out
