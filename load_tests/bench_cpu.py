"""CPU per request, in process: ``python -m load_tests.bench_cpu [--compare REV ...]``.

What the hot path costs the worker, without HTTP and without a load generator: the real app
(``create_app`` with its lifespan, the shipped catalogue) on a real embedded Redis, driven through ASGI
one request at a time, for ``POST /v1/decide`` (a page view, distinct customers) and ``POST
/v1/events`` (batches of 500). Reports the worker's CPU time per request (``time.process_time``, so
the wait for Redis is not counted, and other processes on the machine count little), and Redis's own
CPU time for the same requests (its ``INFO cpu``: the embedded server serves nothing else), the median
of ``--rounds`` rounds. With one worker, ingestion is bound by whichever of the two is larger.

With ``--compare REV [REV ...]`` it measures git revisions of this repository instead, each in its own
worktree (under a temporary folder, removed after), interleaved round by round so that a noisy moment
of the machine falls on all of them: this is how docs/performance.md says what each change bought.

Profile the same loop with py-spy:
``py-spy record -o decide.svg -- python -m load_tests.bench_cpu --rounds 1 --decides 20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Call = Callable[[str, bytes], Awaitable[int]]

_PLACEMENTS = ("web.home", "web.product_page", "web.cart", "web.faq")
_EVENTS = ("page_view", "product_view", "faq_view", "search")


def decide_body(i: int) -> bytes:
    return json.dumps(
        {
            "customer_id": f"cpu-c-{i}",
            "placement": _PLACEMENTS[i % len(_PLACEMENTS)],
            "event": {"type": _EVENTS[i % len(_EVENTS)], "properties": {"page": f"/p/{i % 97}"}},
            "context": {"device": "mobile" if i % 3 else "desktop"},
        }
    ).encode()


def events_body(batch: int, size: int = 500) -> bytes:
    return json.dumps(
        {
            "events": [
                {
                    "event_id": f"cpu-e-{batch}-{k}",
                    "customer_id": f"cpu-b-{(batch * size + k) % 200_000}",
                    "type": _EVENTS[k % len(_EVENTS)],
                    "properties": {"item_id": f"sku-{k % 50}"},
                }
                for k in range(size)
            ]
        }
    ).encode()


def asgi_caller(app: Any) -> Call:
    """POST a JSON body to ``app`` through ASGI; returns the status."""

    async def call(path: str, body: bytes) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        received = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    return call


def _redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _cpu_us(call: Call, path: str, bodies: list[bytes], expect: int, redis: Any) -> tuple[float, float]:
    """The worker's and Redis's CPU time per request (µs)."""
    redis_started, started = _redis_cpu_s(redis), time.process_time()
    for body in bodies:
        status = await call(path, body)
        if status != expect:
            raise SystemExit(f"{path} answered {status}, not {expect}")
    worker = time.process_time() - started
    return worker / len(bodies) * 1e6, (_redis_cpu_s(redis) - redis_started) / len(bodies) * 1e6


async def _measure(decides: int, batches: int, rounds: int) -> dict[str, float]:
    import redis as redis_py
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from app.settings import Settings
    from feature_store.embedded import temporary

    decide_rounds: list[tuple[float, float]] = []
    events_rounds: list[tuple[float, float]] = []
    with temporary() as server, redis_py.Redis.from_url(server.url) as redis:
        app = create_app(Settings(redis_url=server.url, log_format="json"))
        async with LifespanManager(app) as manager:
            call = asgi_caller(manager.app)
            await _cpu_us(call, "/v1/decide", [decide_body(i) for i in range(300)], 200, redis)  # warm
            for r in range(rounds):
                start = (r + 1) * decides
                bodies = [decide_body(start + i) for i in range(decides)]
                decide_rounds.append(await _cpu_us(call, "/v1/decide", bodies, 200, redis))
                batch_bodies = [events_body(r * batches + b) for b in range(batches)]
                events_rounds.append(await _cpu_us(call, "/v1/events", batch_bodies, 202, redis))
    return {
        "decide_cpu_us": round(statistics.median(w for w, _ in decide_rounds), 1),
        "decide_redis_cpu_us": round(statistics.median(r for _, r in decide_rounds), 1),
        "events_cpu_us_per_event": round(statistics.median(w for w, _ in events_rounds) / 500, 2),
        "events_redis_cpu_us_per_event": round(statistics.median(r for _, r in events_rounds) / 500, 2),
    }


def _compare(revisions: list[str], args: argparse.Namespace) -> None:
    # Here, not at the top: a worktree's child loads this file, and an older tree has no worktrees().
    from load_tests.service import worktrees

    with worktrees(revisions) as trees:
        figures: list[list[dict[str, float]]] = [[] for _ in trees]
        for _ in range(args.rounds):
            for (_, tree), runs in zip(trees, figures, strict=True):
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(tree), str(args.decides), str(args.batches)],
                    check=True, capture_output=True, text=True, cwd=tree,
                )  # fmt: skip
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for (rev, _), runs in zip(trees, figures, strict=True):
            medians = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
            print(json.dumps({"revision": rev, **medians}))


# Run in a worktree: its packages on the path, this file's driver (the worktree may predate it).
_CHILD = f"""
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("bench_cpu_driver", {str(Path(__file__).resolve())!r})
driver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver)
print(json.dumps(driver.run(int(sys.argv[2]), int(sys.argv[3]), 1)))
"""


def run(decides: int, batches: int, rounds: int) -> dict[str, float]:
    """Measure on uvloop, the loop uvicorn runs the service on."""
    import uvloop

    return uvloop.run(_measure(decides, batches, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decides", type=int, default=3000, help="decisions per round")
    parser.add_argument("--batches", type=int, default=20, help="batches of 500 events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", nargs="+", metavar="REV", help="git revisions to measure instead")
    args = parser.parse_args()
    if args.compare:
        _compare(args.compare, args)
        return
    print(json.dumps(run(args.decides, args.batches, args.rounds)))


if __name__ == "__main__":
    main()
