"""What the benchmark reads of the service's Redis (load_tests/benchmark.py), on a real redis-server."""

from __future__ import annotations

import time

import redis

from load_tests.benchmark import Server, redis_state


def test_redis_state_counts_a_fork_and_its_pause(redis_url: str) -> None:
    server = Server("http://127.0.0.1:1", 0, redis_url)
    before = redis_state(server)
    assert before is not None
    with redis.Redis.from_url(redis_url) as client:
        client.bgsave()  # a fork, as an append-only file rewrite is
        deadline = time.monotonic() + 30
        while client.info("persistence")["rdb_bgsave_in_progress"] and time.monotonic() < deadline:
            time.sleep(0.05)
    after = redis_state(server)
    assert after is not None
    assert after.forks == before.forks + 1
    assert after.last_fork_ms > 0
    assert after.used_memory_mb > 0
    assert redis_state(Server("http://127.0.0.1:1", 0)) is None  # the floor has no Redis
