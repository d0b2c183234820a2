"""The embedded redis-server with an operator's own redis.conf: read first, the service's choices win,
and a configuration it cannot run with is refused at start with Redis's own reason."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from pydantic import ValidationError

from app.settings import Settings
from feature_store.embedded import EmbeddedRedis, EmbeddedRedisError

T = TypeVar("T")


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "redis.conf"
    path.write_text(text)
    return path


def test_an_operators_conf_is_read_and_the_services_own_settings_win(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines = ["maxmemory 12mb", "maxmemory-policy allkeys-lru", "appendonly no", f"dir {tmp_path}"]
    lines.append("loglevel debug")
    conf = _conf(tmp_path, "\n".join(lines) + "\n")
    with EmbeddedRedis(data, conf=conf) as server, redis.Redis.from_url(server.url) as client:
        assert client.config_get("maxmemory") == {"maxmemory": "12582912"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": str(data.resolve())}
        assert client.config_get("loglevel") == {"loglevel": "warning"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert server.url == f"unix://{data.resolve()}/redis.sock"


COMPACT = {"ziplist", "listpack"}  # Redis 6's name for the encoding and Redis 7's


def _encodings(client: redis.Redis, value_bytes: int) -> tuple[str, str]:
    """How Redis keeps a one-field hash and a one-member sorted set whose value is ``value_bytes`` long."""
    value = "v" * value_bytes
    client.hset("h", "features", value)
    client.zadd("z", {value: 1})
    return client.object("encoding", "h").decode(), client.object("encoding", "z").decode()


def test_hashes_and_sorted_sets_with_values_of_up_to_1024_bytes_are_kept_compact(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "data") as server, redis.Redis.from_url(server.url) as client:
        assert set(_encodings(client, 1024)) <= COMPACT
        client.delete("h", "z")
        assert _encodings(client, 1025) == ("hashtable", "skiplist")


def test_an_operators_conf_keeps_its_own_limit_for_compact_values(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "# the default\nHASH-MAX-ZIPLIST-VALUE 64\n")
    with EmbeddedRedis(tmp_path / "data", conf=conf) as server, redis.Redis.from_url(server.url) as client:
        hash_encoding, zset_encoding = _encodings(client, 500)
        assert hash_encoding == "hashtable"
        assert zset_encoding in COMPACT


def test_a_conf_redis_refuses_stops_the_start_with_its_reason_and_frees_the_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(EmbeddedRedisError, match=r"(?s)exited at start-up.*maxmemroy"):
        EmbeddedRedis(data, conf=_conf(tmp_path, "maxmemroy 12mb\n")).start()
    with EmbeddedRedis(data) as server, redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_a_missing_conf_is_named(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match=r"configuration file .*nope\.conf is not a file"):
        EmbeddedRedis(tmp_path / "data", conf=tmp_path / "nope.conf").start()
    assert not (tmp_path / "data").exists()


def test_a_conf_that_asks_for_a_password_is_refused_at_once(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "requirepass s3cret\n")
    with pytest.raises(EmbeddedRedisError, match=r"asks for a password .*NOAUTH.*requirepass"):
        EmbeddedRedis(tmp_path / "data", conf=conf, startup_timeout_s=30).start()
    with EmbeddedRedis(tmp_path / "data") as server, redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_the_setting_names_a_conf_that_is_not_there(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NBA_EMBEDDED_REDIS_CONF", str(tmp_path / "nope.conf"))
    with pytest.raises(ValidationError, match=r"(?s)embedded_redis_conf.*does not point to a file"):
        Settings(_env_file=None)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin Redis to one")
def test_a_conf_can_let_the_rewrite_of_a_pinned_redis_use_every_cpu(tmp_path: Path) -> None:
    """The example of docs/operations.md: a child forks with its parent's CPUs, unless Redis is told."""
    every = os.sched_getaffinity(0)
    conf = _conf(tmp_path, f"aof_rewrite_cpulist {','.join(str(cpu) for cpu in sorted(every))}\n")
    with EmbeddedRedis(tmp_path / "data", conf=conf) as server, redis.Redis.from_url(server.url) as client:
        assert server.pid is not None
        os.sched_setaffinity(server.pid, {min(every)})
        client.execute_command("DEBUG", "POPULATE", 1_000_000)  # a rewrite long enough to be seen
        client.bgrewriteaof()
        seen: set[frozenset[int]] = set()  # the child sets its CPUs just after it forks: read until then
        deadline = time.monotonic() + 10
        while frozenset(every) not in seen and time.monotonic() < deadline:
            for child in _children(server.pid):
                with contextlib.suppress(ProcessLookupError):
                    seen.add(frozenset(os.sched_getaffinity(child)))
        assert seen, "no rewrite child seen"
        assert frozenset(every) in seen
        assert os.sched_getaffinity(server.pid) == {min(every)}


def _eventually(check: Callable[[], T | None], within_s: float, what: str) -> T:
    deadline = time.monotonic() + within_s
    while (found := check()) is None or found == []:
        assert time.monotonic() < deadline, f"no {what} within {within_s:g}s"
        time.sleep(0.01)
    return found


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="scheduling classes are Linux's")
def test_a_rewrite_of_the_append_only_file_runs_in_the_idle_scheduling_class(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "data") as server, redis.Redis.from_url(server.url) as client:
        assert server.pid is not None
        assert server.idle_children is not None
        client.execute_command("DEBUG", "POPULATE", 400)
        client.config_set("rdb-key-save-delay", 5000)  # µs per key: the rewrite takes about 2 s
        client.bgrewriteaof()
        (child,) = _eventually(lambda: _children(server.pid), 5, "rewrite child")
        assert os.sched_getscheduler(server.pid) == os.SCHED_OTHER  # Redis itself is left as it is
        _eventually(lambda: os.sched_getscheduler(child) == os.SCHED_IDLE or None, 1, "idle class")
        assert server.idle_children.lowered == 1
        client.config_set("rdb-key-save-delay", 0)
        _eventually(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0 or None, 10, "end")
        assert client.info("persistence")["aof_last_bgrewrite_status"] == "ok"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="scheduling classes are Linux's")
def test_a_process_that_is_not_redis_s_child_is_left_alone(tmp_path: Path) -> None:
    """A temporary file left by an earlier run may name a process id since given to another process."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        with EmbeddedRedis(tmp_path / "data") as server:
            (server.data_dir / f"temp-{other.pid}.rdb").write_bytes(b"")
            (server.data_dir / f"temp-rewriteaof-bg-{other.pid}.aof").write_bytes(b"")
            time.sleep(0.3)  # six looks
            assert os.sched_getscheduler(other.pid) == os.SCHED_OTHER
            assert server.idle_children is not None
            assert server.idle_children.lowered == 0
    finally:
        other.kill()
        other.wait()
