"""Start ``nba serve`` on this machine for a simulation, an evaluation run or a benchmark: its embedded
Redis (and so its learner) in a fresh folder, one worker, a free loopback port. Stopped, and its folder
removed, on the way out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from feature_store.embedded import free_port


class ServiceNotReady(RuntimeError):
    """The service did not answer /readyz in time, or exited; the message ends with its log."""


@dataclass(frozen=True)
class Service:
    base_url: str
    redis_url: str  # the embedded Redis, for reading what the service wrote
    pid: int  # of ``nba serve``


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started here as Ctrl-C would (SIGINT: it shuts down cleanly), killed after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_service(
    *args: str,
    env: Mapping[str, str] | None = None,
    ready_within_s: float = 30.0,
    cwd: Path | None = None,
) -> Iterator[Service]:
    """Yield a ready service started with ``nba serve ARGS`` (from ``cwd``: the code checked out there,
    load_tests/bench_wire.py; by default the caller's).

    The service sees the caller's environment without its ``NBA_*`` variables and
    ``PROMETHEUS_MULTIPROC_DIR``, plus ``env`` (e.g.
    ``{"NBA_LEARNER_PUBLISH_S": "0.2"}``)."""
    port = free_port()
    # Its own settings and its own metrics folder, whatever the caller's environment holds.
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("NBA_", "PROMETHEUS_MULTIPROC_DIR"))
    }
    child_env = inherited | dict(env or {})
    data_dir = Path(tempfile.mkdtemp(prefix="nba-local-"))
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with (data_dir / "service.log").open("wb") as output:
        server = subprocess.Popen(
            [*command, *args], env=child_env, stdout=output, stderr=subprocess.STDOUT, cwd=cwd
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                log = (data_dir / "service.log").read_text(errors="replace")[-2000:]
                raise ServiceNotReady(f"the service did not become ready:\n{log}")
            time.sleep(0.1)
        yield Service(base, f"unix://{data_dir}/redis.sock", server.pid)
    finally:
        stop(server)
        shutil.rmtree(data_dir, ignore_errors=True)
