"""Start ``nba serve`` for a benchmark: embedded Redis in a fresh folder, one worker, a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from feature_store.embedded import free_port


@dataclass(frozen=True)
class Service:
    base_url: str
    redis_url: str  # the embedded Redis, for reading what the service wrote


@contextmanager
def running_service(*args: str, env: Mapping[str, str] | None = None) -> Iterator[Service]:
    """Yield a ready service; stop it (and its Redis) on the way out.

    The service sees the caller's environment without its ``NBA_*`` variables, plus ``env`` (e.g.
    ``{"NBA_LEARNER_PUBLISH_S": "0.2"}``)."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")} | dict(env or {})
    data_dir = tempfile.mkdtemp(prefix="nba-bench-")
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", data_dir, *args]
    server = subprocess.Popen(command, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the service did not become ready")
            time.sleep(0.1)
        yield Service(base, f"unix://{data_dir}/redis.sock")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=15)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
