"""Instructions per request, counted by callgrind: ``python -m load_tests.bench_instructions``.

This machine's speed varies between runs by more than most changes to the hot path are worth (docs/
performance.md), so timings cannot tell a 3% step from noise. The count of instructions a process
executes for the same work barely moves between runs (±0.5%), so it can. It is not time: a cache miss
or a system call costs more than its instructions say. Use it to tell whether a change does less work,
and the wire benchmark (load_tests/benchmark.py) for what that buys.

Four figures, each from a process run under valgrind's callgrind, counted only over the measured
requests (``callgrind_control`` zeroes the counts before them and dumps them after):

* ``decide_new``: the worker (the real app through ASGI, as in bench_cpu.py), per ``POST /v1/decide``
  for a customer seen for the first time;
* ``decide_history``: the same for customers with 25 or more events each (20 recent events, tens of
  window buckets to decode);
* ``event_returning``: redis-server, per event of ``POST /v1/events`` batches of 500 in the wire
  benchmark's shop mix, for customers with events already, the clock moving 7.5 s per batch (so a
  quarter of the calls renew the profile's expiries, as under the benchmark's load);
* ``event_new``: the same for customers seen for the first time.

Redis runs with its append-only file, as the embedded default does. ``--events-per-customer N`` puts
N events of one customer in a row in each batch (one script call applies them together). Needs
valgrind (``apt-get install valgrind``); each figure takes about a minute. ``--compare REV [REV ...]``
measures git revisions of this repository, each in its own worktree, side by side: how
docs/performance.md says what a change bought in instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("decide_new", "decide_history", "event_returning", "event_new")

# The wire benchmark's mix (load_tests/wrk/events.lua), in a hundred events.
_KINDS = (
    [{"type": "page_view", "properties": {"page": "/"}}] * 50
    + [{"type": "product_view", "properties": {"item_id": "sku-1", "page": "/p/sku-1"}}] * 25
    + [{"type": "search", "properties": {"query": "rain jacket"}}] * 10
    + [{"type": "email_open", "properties": {"campaign": "weekly"}}] * 10
    + [{"type": "add_to_cart", "properties": {"item_id": "sku-1", "price": 25.0, "quantity": 1}}] * 5
)


def events_body(batch: int, pool: int, per_customer: int = 1) -> bytes:
    """500 events, ``per_customer`` in a row for each customer drawn from ``pool``; ids unique per batch."""
    cursor, events = batch * 100_003 % pool, []
    for k in range(500):
        if k % per_customer == 0:
            cursor = (cursor + 7919) % pool
        events.append({"event_id": f"i-{batch}-{k}", "customer_id": f"i-c-{cursor}", **_KINDS[k % 100]})
    return json.dumps({"events": events}).encode()


def _callgrind(command: list[str], out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]


def _dumped(out: Path) -> int:
    """The instructions counted between zeroing and the dump (callgrind's first dump file)."""
    [dump] = sorted(out.parent.glob(out.name + ".*"))
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no summary in {dump}")


def _toggle(pid: int, flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


async def _decides(history: bool, count: int) -> None:
    """In the process under callgrind: warm up, then ``count`` decisions between zero and dump."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from app.settings import Settings
    from feature_store.embedded import temporary
    from load_tests.bench_cpu import asgi_caller, decide_body

    customers = 100 if history else 10**9
    with temporary() as server:
        # No background tasks: under callgrind the wall clock runs fifty times slower per request, so
        # they would run fifty times as often per decision. A budget that a slowed decision cannot miss.
        settings = Settings(redis_url=server.url, log_format="json", decision_budget_ms=10_000)
        app = create_app(settings, watch=False)
        async with LifespanManager(app) as manager:
            call = asgi_caller(manager.app)
            warm = 2_500 if history else 300  # with history: 25 page views for each of 100 customers
            for i in range(warm):
                await call("/v1/decide", decide_body(i % customers))
            start = 0 if history else warm
            _toggle(os.getpid(), "-z")
            for i in range(start, start + count):
                if await call("/v1/decide", decide_body(i % customers)) != 200:
                    raise SystemExit("a decision failed")
            _toggle(os.getpid(), "-d")


async def _events(url: str, redis_pid: int, new: bool, batches: int, per_customer: int) -> None:
    """Ingest ``batches`` batches to warm up, then as many between zeroing Redis's counts and dumping."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from app.settings import Settings
    from load_tests.bench_cpu import asgi_caller

    now = [1_800_000_000.0]
    settings = Settings(redis_url=url, log_format="json", store_timeout_ms=10_000)
    app = create_app(settings, clock=lambda: now[0], watch=False)
    pool = 10**9 if new else 1_000  # returning: each customer has an event every second batch
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        call = asgi_caller(manager.app)
        for n in range(2 * batches):
            if n == batches:
                _toggle(redis_pid, "-z")
            now[0] += 7.5
            if await call("/v1/events", events_body(n, pool, per_customer)) != 202:
                raise SystemExit("a batch was not accepted")
        _toggle(redis_pid, "-d")


def _redis_under_callgrind(folder: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """redis-server as the embedded default runs it (append-only file, fsync each second), counted."""
    import redis as redis_py

    from feature_store.embedded import find_redis_server, free_port

    port, out = free_port(), folder / "redis.callgrind"
    args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
    args += ["--auto-aof-rewrite-percentage", "0"]  # no rewrite child in the middle of the count
    server = subprocess.Popen(_callgrind(args, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    with redis_py.Redis.from_url(url) as client:
        for _ in range(600):
            try:
                client.ping()
                return server, url, out
            except redis_py.ConnectionError:
                time.sleep(0.1)
    server.kill()
    raise SystemExit("redis-server did not start under valgrind within a minute")


def child(figure: str, count: int, per_customer: int = 1) -> None:
    """Run in a process of its own (under callgrind for the decide figures); prints the events' figure."""
    import uvloop

    if figure.startswith("decide_"):
        uvloop.run(_decides(figure == "decide_history", count))
        return
    with tempfile.TemporaryDirectory(prefix="nba-instructions-") as folder:
        server, url, out = _redis_under_callgrind(Path(folder))
        try:
            uvloop.run(_events(url, server.pid, figure == "event_new", count, per_customer))
        finally:
            server.terminate()
            server.wait(timeout=60)
        print(json.dumps({figure: round(_dumped(out) / (count * 500))}))


def measure(tree: Path, decides: int, batches: int, per_customer: int = 1) -> dict[str, int]:
    """The four figures for the code in ``tree``."""
    figures: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="nba-instructions-") as folder:
        for figure in FIGURES:
            command = [sys.executable, "-c", _CHILD, str(tree), figure]
            if figure.startswith("decide_"):
                out = Path(folder) / f"{figure}.callgrind"
                command = _callgrind([*command, str(decides)], out)
                subprocess.run(command, check=True, capture_output=True, cwd=tree)
                figures[figure] = round(_dumped(out) / decides)
            else:
                done = subprocess.run(
                    [*command, str(batches), str(per_customer)],
                    check=True, capture_output=True, text=True, cwd=tree,
                )  # fmt: skip
                figures.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return figures


# Run in a worktree: its packages on the path, this file's driver (the worktree may predate it).
_CHILD = f"""
import importlib.util, sys
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("bench_instructions_driver", {str(Path(__file__).resolve())!r})
driver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver)
driver.child(sys.argv[2], *map(int, sys.argv[3:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decides", type=int, default=300, help="measured decisions per figure")
    parser.add_argument("--batches", type=int, default=8, help="measured batches of 500 events per figure")
    parser.add_argument(
        "--events-per-customer",
        type=int,
        default=1,
        choices=range(1, 501),
        metavar="N",
        help="events of one customer in a row in each batch (default 1: 500 customers a batch)",
    )
    parser.add_argument("--compare", nargs="+", metavar="REV", help="git revisions to measure instead")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind and callgrind_control: apt-get install valgrind")
    if not args.compare:
        figures = measure(ROOT, args.decides, args.batches, args.events_per_customer)
        print(json.dumps({"revision": "working tree", **figures}))
        return
    # Here, not at the top: a worktree's child loads this file, and an older tree has no worktrees().
    from load_tests.service import worktrees

    with worktrees(args.compare) as trees:
        for rev, tree in trees:
            figures = measure(tree, args.decides, args.batches, args.events_per_customer)
            print(json.dumps({"revision": rev, **figures}), flush=True)


if __name__ == "__main__":
    main()
