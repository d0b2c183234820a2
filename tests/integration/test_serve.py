"""``nba serve`` as a person runs it: the embedded Redis starts, keeps data across restarts, and stops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from feature_store.embedded import free_port
from feature_store.keys import LEARNER_LOCK
from models.local_service import stop

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}


@contextmanager
def serving(data_dir: Path, port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=_env() | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("nba serve did not become ready within 30 s")
        yield process
    finally:
        stop(process)


def redis_running_in(data_dir: Path) -> bool:
    """Whether the embedded redis-server answers on its socket in the data folder."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(data_dir / "redis.sock"))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_serve_keeps_data_across_restarts_and_stops_its_redis(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    conf = tmp_path / "redis.conf"  # the operator's own, NBA_EMBEDDED_REDIS_CONF
    conf.write_text("maxmemory 64mb\n")
    with serving(data_dir, port, {"NBA_EMBEDDED_REDIS_CONF": str(conf)}):
        r = httpx.post(f"{base}/v1/events", json={"customer_id": "c-1", "type": "signup"})
        assert r.status_code == 202
        assert redis_running_in(data_dir)
        with redis.Redis(unix_socket_path=str(data_dir / "redis.sock"), decode_responses=True) as client:
            assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}

        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(free_port()),
                "--data-dir",
                str(data_dir),
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "in use by another nba service" in second.stderr
    assert not redis_running_in(data_dir), "the embedded redis-server stops with the service"
    assert (data_dir / "appendonly.aof").exists() or (data_dir / "appendonlydir").exists()

    with serving(data_dir, port):
        profile = httpx.get(f"{base}/v1/customers/c-1").json()
        assert profile["counts"]["signup"]["total"] == 1
        assert profile["stage"] == "consideration"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/task").exists(),
    reason="scheduling classes and /proc are Linux's",
)
def test_the_learner_runs_on_time_that_redis_and_the_workers_leave(tmp_path: Path) -> None:
    """The embedded learner runs in the idle scheduling class: its bursts delayed Redis's replies and
    raised decide's p99 (docs/performance.md). nba serve and its redis-server stay in the normal class."""
    data_dir, port = tmp_path / "data", free_port()
    with serving(data_dir, port) as process:
        classes = {_command(child): os.sched_getscheduler(child) for child in _children(process.pid)}
        learners = [command for command in classes if "app.cli learn" in command]
        assert len(learners) == 1, classes
        assert classes.pop(learners[0]) == os.SCHED_IDLE
        assert any("redis-server" in command for command in classes), classes
        assert set(classes.values()) == {os.SCHED_OTHER}, classes
        assert os.sched_getscheduler(process.pid) == os.SCHED_OTHER
        # In the idle class it still runs, on an idle machine at once: it takes the one learner's lock.
        store = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
        deadline = time.monotonic() + 10  # a bound on starting a process, not a benchmark
        while not store.exists(LEARNER_LOCK) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.exists(LEARNER_LOCK)
        store.close()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc (Linux)")
def test_the_learner_and_redis_die_with_a_killed_serve(tmp_path: Path) -> None:
    """Even killed outright (no chance to clean up), nba serve leaves no learner or redis-server behind."""
    data_dir, port = tmp_path / "data", free_port()
    with serving(data_dir, port) as process:
        children = _children(process.pid)
        assert len(children) >= 2, children  # the embedded redis-server and the learner
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10  # a bound on the kernel's signal delivery, not a benchmark
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [child for child in children if _alive(child)]
