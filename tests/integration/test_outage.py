"""Redis going away and coming back, with a real redis-server stopped, frozen and restarted under the app.

The bounds on elapsed time here are the contract (an answer within a second), not a benchmark: a refused
connection fails at once and a frozen server at the store timeout (0.5 s)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from feature_store.embedded import EmbeddedRedis, free_port
from tests.conftest import AppFactory


@pytest.fixture
def own_redis(tmp_path: object) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(str(tmp_path), port=free_port(), persist=True).start()
    yield server
    server.stop()


async def timed_post(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = await client.post("/v1/events", json=body)
    return response, time.monotonic() - start


def event(event_id: str) -> dict[str, object]:
    return {"event_id": event_id, "customer_id": "c-1", "type": "page_view"}


async def test_stopped_redis_answers_503_then_recovers_without_restart(
    make_client: AppFactory, own_redis: EmbeddedRedis
) -> None:
    async with make_client(redis_url=own_redis.url) as client:
        assert (await client.post("/v1/events", json=event("e-1"))).status_code == 202
        own_redis.stop()

        response, elapsed = await timed_post(client, event("e-2"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "store_unavailable"
        assert elapsed < 1.0
        batch, elapsed = await timed_post(client, {"events": [event(f"b-{i}") for i in range(100)]})
        assert batch.status_code == 503
        assert elapsed < 1.0
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/livez")).status_code == 200

        # Same folder, same port: the append-only file brings back what was acknowledged. The new server
        # has an empty script cache, which the store reloads on its own.
        port = int(own_redis.url.rsplit(":", 1)[1].split("/")[0])
        with EmbeddedRedis(own_redis.data_dir, port=port):
            assert (await client.get("/readyz")).status_code == 200
            response = await client.post("/v1/events", json=event("e-2"))
            assert response.status_code == 202, response.text
            profile = (await client.get("/v1/customers/c-1")).json()
            assert profile["counts"]["page_view"]["total"] == 2


async def test_frozen_redis_answers_503_within_the_store_timeout_and_a_retry_is_safe(
    make_client: AppFactory, own_redis: EmbeddedRedis
) -> None:
    assert own_redis.pid is not None
    async with make_client(redis_url=own_redis.url) as client:
        assert (await client.post("/v1/events", json=event("e-1"))).status_code == 202
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            response, elapsed = await timed_post(client, event("e-2"))
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert response.status_code == 503
        assert elapsed < 1.0
        # The frozen server may still have run the write once it woke; the client was told nothing was
        # acknowledged and retries with the same event id, which is then a duplicate or the first copy.
        retry = await client.post("/v1/events", json=event("e-2"))
        assert retry.status_code == 202
        assert retry.json()["accepted"] + retry.json()["duplicates"] == 1
        profile = (await client.get("/v1/customers/c-1")).json()
        assert profile["counts"]["page_view"]["total"] == 2
