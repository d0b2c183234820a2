"""Shared fixtures: one real redis-server for the session, flushed before every test; an injectable clock;
the real app with its real lifespan behind an httpx client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.settings import Settings
from feature_store import ProfileStore
from feature_store.embedded import EmbeddedRedis, temporary
from feature_store.store import StoreConfig


class Clock:
    """Time under the test's control: starts at the real now, moves only when told."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with temporary() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client for looking at what the service wrote."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(redis_url: str, clock: Clock) -> AsyncIterator[ProfileStore]:
    store = ProfileStore.connect(redis_url, StoreConfig(), clock=clock)
    await store.load_scripts()
    yield store
    await store.aclose()


AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_client(redis_url: str, clock: Clock) -> AppFactory:
    """``async with make_client(api_keys=...) as client``: the real app, lifespan and all (``watch=False``:
    without its background tasks)."""

    @asynccontextmanager
    async def factory(*, watch: bool = True, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(_env_file=None, **{"redis_url": redis_url, "log_format": "json", **overrides})
        app = create_app(settings, clock=clock, watch=watch)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://nba.test") as client:
                yield client

    return factory


@pytest.fixture
async def client(make_client: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client
