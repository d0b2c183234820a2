"""An external Redis's configuration, read at start: what would lose data or memory is said, with what to
set (feature_store/redis_config.py); and read again at every scrape of /metrics, so that a Redis changed
after the start is seen. Against the tests' real redis-server, its settings changed and put back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
import structlog

import app.main
from feature_store import ProfileStore
from tests.conftest import AppFactory
from tests.integration.test_metrics import Samples, scrape, total


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


@pytest.fixture
def without_config(redis_url: str, raw_redis: redis.Redis) -> Iterator[str]:
    """The URL of a Redis user that may do everything but ``CONFIG``, as some managed services allow."""
    raw_redis.acl_setuser(
        "nba-app", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all", "-config"]
    )
    limited = redis_url.replace("redis://", "redis://nba-app:s3cret@", 1)
    assert limited != redis_url
    yield limited
    raw_redis.acl_deluser("nba-app")


async def test_a_redis_that_refuses_config_is_reported_unchecked(without_config: str) -> None:
    store = ProfileStore.connect(without_config)
    try:
        [finding] = await store.check_config()
    finally:
        await store.aclose()
    assert (finding.setting, finding.value, finding.loses_data) == ("CONFIG GET", None, True)
    assert "noeviction" in finding.want
    assert "could not be read" in finding.why


def problems(samples: Samples) -> dict[str, float]:
    """Both effects' values; both are there, 0 included."""
    gauge = "nba_redis_config_problems"
    return {dict(labels)["effect"]: v for (name, labels), v in samples.items() if name == gauge}


async def test_a_scrape_counts_what_is_wrong_with_redis_now(
    make_client: AppFactory, settings_restored: redis.Redis
) -> None:
    settings_restored.config_set("appendonly", "yes")
    async with make_client(watch=False) as client:
        assert problems(await scrape(client)) == {"data_loss": 0, "memory": 0}
        # Changed while the service runs (an operator, a failover to a replica configured otherwise).
        settings_restored.config_set("maxmemory-policy", "allkeys-lru")
        settings_restored.config_set("zset-max-ziplist-value", "64")
        assert problems(await scrape(client)) == {"data_loss": 1, "memory": 1}
        settings_restored.config_set("appendonly", "no")
        assert problems(await scrape(client)) == {"data_loss": 2, "memory": 1}
        settings_restored.config_set("maxmemory-policy", "noeviction")
        settings_restored.config_set("appendonly", "yes")
        settings_restored.config_set("zset-max-ziplist-value", "1024")
        assert problems(await scrape(client)) == {"data_loss": 0, "memory": 0}


async def test_a_scrape_leaves_the_problems_out_when_redis_refuses_config(
    make_client: AppFactory, without_config: str
) -> None:
    async with make_client(watch=False, redis_url=without_config) as client:
        samples = await scrape(client)
    assert total(samples, "nba_scrape_store_success") == 1  # the backlogs were read
    assert total(samples, "nba_learner_lag", stream="decisions") == 0
    assert not [name for name, _ in samples if name == "nba_redis_config_problems"]  # unknown, not 0


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
