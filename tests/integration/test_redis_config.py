"""An external Redis's configuration, read at start: what would lose data or memory is said, with what to
set (feature_store/redis_config.py). Against the tests' real redis-server, its settings changed and put
back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
import structlog

import app.main
from feature_store import ProfileStore
from tests.conftest import AppFactory


@pytest.fixture
def settings_restored(raw_redis: redis.Redis) -> Iterator[redis.Redis]:
    names = ("maxmemory-policy", "appendonly", "hash-max-ziplist-value", "zset-max-ziplist-value")
    before = {name: raw_redis.config_get(name)[name] for name in names}
    yield raw_redis
    for name, value in before.items():
        raw_redis.config_set(name, value)


async def test_a_redis_that_evicts_or_forgets_is_named_with_what_to_set(
    store: ProfileStore, settings_restored: redis.Redis
) -> None:
    settings_restored.config_set("appendonly", "yes")
    assert await store.check_config() == []  # the tests' Redis otherwise runs as the service needs

    settings_restored.config_set("maxmemory-policy", "volatile-lru")
    settings_restored.config_set("appendonly", "no")
    settings_restored.config_set("hash-max-ziplist-value", "64")
    found = {f.setting: f for f in await store.check_config()}
    assert set(found) == {"maxmemory-policy", "appendonly", "hash-max-ziplist-value"}
    assert (found["maxmemory-policy"].value, found["maxmemory-policy"].want) == ("volatile-lru", "noeviction")
    assert found["maxmemory-policy"].loses_data
    assert found["appendonly"].loses_data
    assert not found["hash-max-ziplist-value"].loses_data  # memory, not data
    assert found["hash-max-ziplist-value"].want == "1024"


async def test_a_redis_that_refuses_config_is_reported_unchecked(
    redis_url: str, raw_redis: redis.Redis
) -> None:
    raw_redis.acl_setuser(
        "nba-app", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all", "-config"]
    )
    try:
        limited = redis_url.replace("redis://", "redis://nba-app:s3cret@", 1)
        assert limited != redis_url
        store = ProfileStore.connect(limited)
        try:
            [finding] = await store.check_config()
        finally:
            await store.aclose()
    finally:
        raw_redis.acl_deluser("nba-app")
    assert (finding.setting, finding.value, finding.loses_data) == ("CONFIG GET", None, True)
    assert "noeviction" in finding.want
    assert "could not be read" in finding.why


async def test_the_service_says_so_at_start(
    make_client: AppFactory,
    settings_restored: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings_restored.config_set("maxmemory-policy", "allkeys-lru")
    settings_restored.config_set("appendonly", "yes")
    # The module's logger cached its configuration (and stderr) at first use, in an earlier test.
    monkeypatch.setattr(app.main, "log", structlog.get_logger(*app.main.log._logger_factory_args))
    async with make_client(watch=False) as client:
        assert (await client.get("/livez")).status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "redis_config" in line]
    assert [(line["level"], line["setting"], line["value"]) for line in lines] == [
        ("error", "maxmemory-policy", "allkeys-lru")
    ]
    assert "noeviction" in lines[0]["want"]
