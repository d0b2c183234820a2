"""The hot path's shared connection (feature_store/multiplex.py) against a real redis-server: replies
reach the calls that asked, in any interleaving, and a late, lost or abandoned call fails only what it
must; bulk writes keep off it."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as rx

from feature_store import ProfileStore
from feature_store.embedded import free_port
from feature_store.events import Event
from feature_store.multiplex import Multiplexer
from feature_store.store import BULK_COMMANDS, CHUNK_EVENTS
from tests.conftest import Clock


@pytest.fixture
async def pool(redis_url: str) -> aioredis.ConnectionPool:
    pool = aioredis.ConnectionPool.from_url(redis_url, decode_responses=True, socket_timeout=0.5)
    yield pool
    await pool.disconnect()


@pytest.fixture
async def mux(pool: aioredis.ConnectionPool) -> Multiplexer:
    mux = Multiplexer(pool, timeout_s=0.5)
    yield mux
    mux.close()


async def test_concurrent_calls_each_get_their_own_replies(mux: Multiplexer) -> None:
    async def one(i: int) -> list[object]:
        await asyncio.sleep(random.random() / 100)
        n = 1 + i % 4
        return await mux.execute([("ECHO", f"{i}:{k}") for k in range(n)])

    replies = await asyncio.gather(*(one(i) for i in range(300)))

    assert replies == [[f"{i}:{k}" for k in range(1 + i % 4)] for i in range(300)]


async def test_an_error_reply_takes_its_commands_place(mux: Multiplexer) -> None:
    replies = await mux.execute(
        [("SET", "k", "v"), ("HGET", "k", "f"), ("EVALSHA", "0" * 40, 0), ("GET", "k")]
    )

    assert replies[0] == "OK"
    assert isinstance(replies[1], rx.ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[2], rx.NoScriptError)  # redis-py's classes, which the store tells apart
    assert replies[3] == "v"


async def test_a_caller_that_stops_waiting_leaves_the_others_their_replies(
    mux: Multiplexer, pool: aioredis.ConnectionPool
) -> None:
    # The first call is still in Redis (it waits on a list) when its caller gives up.
    abandoned = asyncio.ensure_future(mux.execute([("BLPOP", "nothing-yet", "0.2")]))
    await asyncio.sleep(0.05)
    abandoned.cancel()
    after = await mux.execute([("ECHO", "mine")])

    assert after == ["mine"]
    assert abandoned.cancelled()


async def test_a_late_reply_fails_the_calls_in_flight_and_the_next_call_reconnects(
    mux: Multiplexer, redis_url: str
) -> None:
    assert await mux.execute([("ECHO", "before")]) == ["before"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    stuck = [asyncio.ensure_future(mux.execute([("BLPOP", "never", "2")])) for _ in range(3)]

    results = await asyncio.gather(*stuck, return_exceptions=True)

    assert all(isinstance(r, rx.TimeoutError) for r in results), results
    assert 0.5 <= loop.time() - started < 1.0  # the timeout, checked four times per timeout
    assert await mux.execute([("ECHO", "after")]) == ["after"]
    # The stale connection was closed: its BLPOPs are no longer waiting in Redis.
    with redis.Redis.from_url(redis_url) as client:
        assert client.info("clients")["blocked_clients"] == 0


async def test_a_lost_connection_fails_the_calls_in_flight_and_the_next_call_reconnects(
    mux: Multiplexer, redis_url: str
) -> None:
    assert await mux.execute([("CLIENT", "SETNAME", "hot-path")]) == ["OK"]
    waiting = asyncio.ensure_future(mux.execute([("BLPOP", "never", "5")]))
    await asyncio.sleep(0.05)
    with redis.Redis.from_url(redis_url) as client:
        [victim] = [c for c in client.client_list() if c["name"] == "hot-path"]
        client.client_kill_filter(_id=victim["id"])

    with pytest.raises(rx.ConnectionError):
        await waiting
    assert await mux.execute([("ECHO", "again")]) == ["again"]


async def test_a_server_that_is_not_there_fails_fast(pool: aioredis.ConnectionPool) -> None:
    nowhere = aioredis.ConnectionPool.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
    )
    mux = Multiplexer(nowhere, timeout_s=0.5)
    calls = [mux.execute([("PING",)]) for _ in range(5)]  # all wait for the same attempt

    results = await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(r, rx.ConnectionError) for r in results), results
    mux.close()


async def test_a_write_larger_than_the_socket_takes_at_once_arrives_whole(mux: Multiplexer) -> None:
    value = "x" * 4_000_000
    replies = await mux.execute([("SET", "big", value), ("STRLEN", "big")])

    assert replies == ["OK", 4_000_000]


async def test_what_redis_cannot_take_is_refused_before_anything_is_sent(mux: Multiplexer) -> None:
    with pytest.raises(rx.DataError):
        await mux.execute([("SET", "k", None)])
    assert await mux.execute([("ECHO", "fine")]) == ["fine"]


async def test_the_store_keeps_large_batches_off_the_shared_connection(
    store: ProfileStore,
) -> None:
    """Redis answers one connection's commands in order: a decision behind a batch of 500 script calls
    on the same connection would wait for all of them. Here the batch's first command holds its
    connection (a blocking pop) and the small call is answered meanwhile."""
    batch = [("BLPOP", "held", "0.3"), *(("ECHO", str(i)) for i in range(BULK_COMMANDS))]
    large = asyncio.ensure_future(store._pipelined(batch))
    await asyncio.sleep(0.05)

    small = await store._pipelined([("ECHO", "decision")])

    assert small == ["decision"]
    assert not large.done()
    assert (await large)[1:] == [str(i) for i in range(BULK_COMMANDS)]


async def test_a_decision_is_answered_while_a_platform_batch_is_applied(
    store: ProfileStore, raw_redis: redis.Redis, clock: Clock
) -> None:
    """The batch's script calls go on a connection of their own, so Redis answers the decision's read
    between two of them. On the shared connection it would come after the whole batch: Redis answers
    one connection in order. As many script calls as a write may take on that connection."""
    now_ms = int(clock() * 1000)
    size = BULK_COMMANDS * CHUNK_EVENTS
    events = [Event("page_view", now_ms, customer_id=f"c-{i}", event_id=f"e-{i}") for i in range(size)]
    batch = asyncio.ensure_future(store.ingest(events))
    for _ in range(5_000):  # until Redis is applying the batch
        if raw_redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0):
            break
        await asyncio.sleep(0.001)

    profile = await store.profile("c-0")

    assert not batch.done(), "the read waited for the whole batch"
    assert (await batch).accepted == size
    assert profile is None or profile.id == "c-0"  # applied already, or not yet


async def test_bulk_writes_waiting_behind_one_that_timed_out_fail_with_it(
    store: ProfileStore, raw_redis: redis.Redis
) -> None:
    """Redis frozen (every client paused): the first bulk write fails at the store's timeout (0.5 s),
    and the one waiting for its turn behind it fails then too, not a timeout later."""
    batch = [("ECHO", str(i)) for i in range(BULK_COMMANDS + 1)]
    raw_redis.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def failed_at() -> float:
            with pytest.raises((rx.ConnectionError, rx.TimeoutError, TimeoutError)):
                await store._pipelined(batch)
            return loop.time() - started

        first, second = await asyncio.gather(failed_at(), failed_at())
    finally:
        raw_redis.execute_command("CLIENT", "UNPAUSE")

    assert 0.4 < first < 0.9
    assert second - first < 0.3
    assert await store._pipelined(batch) == [str(i) for i in range(BULK_COMMANDS + 1)]
