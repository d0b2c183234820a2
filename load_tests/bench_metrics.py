"""What metrics and logging add to one decision: ``python -m load_tests.bench_metrics``.

Times, in microseconds per call, each piece of instrumentation a ``POST /v1/decide`` goes through
(app/metrics.py, app/logging.py): the two ASGI middlewares (request id, HTTP histogram) around a bare
app, the decision's counter, histogram and drop-outs, the events counter, the timing of the two store
calls, and the pseudonym of the customer in the decision's log line. Once with metrics in this process,
once in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, as ``nba serve`` runs), each in its own
interpreter because prometheus_client chooses the mode at import. Figures print as JSON lines; nothing
is asserted. No Redis is needed: the store calls timed are no-ops, so what is measured is the wrapper.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def _per_call_us(run: Callable[[int], float], n: int) -> float:
    run(n // 10)  # warm up
    return min(run(n) for _ in range(5)) / n * 1e6  # best of five: the cost, not the noise


def measure(n: int) -> dict[str, Any]:
    from app import logging as app_logging
    from app import metrics
    from policies.funnel import Verdict

    verdicts = tuple(Verdict(f"a{i}", "ineligible" if i % 3 else "not_chosen", "r") for i in range(10))
    verdicts += (Verdict("chosen_one", "chosen", "drawn"),)

    def decided(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            metrics.decided(
                "web.product_page",
                "chosen_one",
                "treatment",
                fallback=False,
                source="web",
                seconds=0.0012,
                offered=verdicts,
            )
        return time.perf_counter() - start

    def ingested(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            metrics.ingested(1, 0)
        return time.perf_counter() - start

    async def nothing(*_: Any) -> None:
        return None

    timed = metrics._timed("bench", nothing)

    def store_call(wrapped: Any) -> Callable[[int], float]:
        def run(k: int) -> float:
            async def calls() -> float:
                start = time.perf_counter()
                for _ in range(k):
                    await wrapped()
                return time.perf_counter() - start

            return asyncio.run(calls())

        return run

    async def bare_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped_app = app_logging.RequestIds(metrics.HttpMetrics(bare_app))

    def asgi(app: Any) -> Callable[[int], float]:
        scope = {"type": "http", "method": "POST", "path": "/v1/decide", "headers": [(b"host", b"x")]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(_: Any) -> None:
            return None

        def run(k: int) -> float:
            async def calls() -> float:
                start = time.perf_counter()
                for _ in range(k):
                    await app(dict(scope), receive, send)
                return time.perf_counter() - start

            return asyncio.run(calls())

        return run

    salt = os.urandom(32)

    def pseudonym(k: int) -> float:
        hide = app_logging.pseudonymizer(salt)
        start = time.perf_counter()
        for _ in range(k):
            hide(None, "info", {"customer": "c:c-42", "decision_id": "d-1"})
        return time.perf_counter() - start

    figures = {
        "decision_counter_histogram_dropouts": _per_call_us(decided, n),
        "events_counter": _per_call_us(ingested, n),
        "store_call_timing": _per_call_us(store_call(timed), n) - _per_call_us(store_call(nothing), n),
        "middlewares": _per_call_us(asgi(wrapped_app), n) - _per_call_us(asgi(bare_app), n),
        "log_pseudonym": _per_call_us(pseudonym, n),
    }
    # One decide: both middlewares, one decision, its event, two store calls, one pseudonymised log line.
    per_decide = (
        figures["middlewares"]
        + figures["decision_counter_histogram_dropouts"]
        + figures["events_counter"]
        + 2 * figures["store_call_timing"]
        + figures["log_pseudonym"]
    )
    return {
        "multiprocess": metrics.MULTIPROCESS,
        "us_per_call": {k: round(v, 2) for k, v in figures.items()},
        "us_per_decide": round(per_decide, 1),
    }


def main() -> None:
    if os.environ.get("NBA_BENCH_METRICS_CHILD"):
        print(json.dumps(measure(int(os.environ["NBA_BENCH_METRICS_CHILD"]))))
        return
    n = 20_000
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["NBA_BENCH_METRICS_CHILD"] = str(n)
    command = [sys.executable, "-m", "load_tests.bench_metrics"]
    subprocess.run(command, env=env, check=True)
    with tempfile.TemporaryDirectory(prefix="nba-bench-metrics-") as folder:
        subprocess.run(command, env={**env, "PROMETHEUS_MULTIPROC_DIR": folder}, check=True)


if __name__ == "__main__":
    main()
