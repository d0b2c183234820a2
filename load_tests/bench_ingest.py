"""Event ingestion, measured end to end: ``python -m load_tests.bench_ingest``.

Starts ``nba serve`` on its embedded Redis (a fresh temporary data folder, one worker, a free port),
then from this process:

1. posts single events one after another and reports the median and p95 latency;
2. posts batches of 500 events for 500 distinct customers and reports events per second, the time per
   event, and what Redis spent on it: its own CPU time in the scripts (``INFO commandstats``: the
   ``apply.lua`` calls, one per customer, and the trigger schedule, one per batch), per call and per
   event;
3. reads profiles back and reports the median latency.

``--customers N`` draws each batch's 500 customers from a pool of N (default 500: the same 500 every
batch, whose profiles are then renewed at most once a minute; a large pool makes most calls the first
of their minute, or of the profile).

Figures print as one JSON line, so runs can be compared. The load is sequential (one request in
flight), so the figures are latencies of an idle service, not its capacity: load_tests/benchmark.py
measures capacity with a compiled load generator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import httpx
import redis

from load_tests.service import percentile, running_service

SCRIPT_COMMANDS = ("evalsha", "eval")  # apply.lua (EVALSHA, one per customer) and the trigger schedule


def _timed_ms(request: httpx.Request, client: httpx.Client, status: int) -> float:
    start = time.perf_counter()
    response = client.send(request)
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == status, response.text
    return elapsed


def _script_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Calls and microseconds of CPU so far of each script command (commands a script runs are counted
    twice by INFO commandstats, in the script and on their own, so only the scripts are read)."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return {
        name: (
            stats.get(f"cmdstat_{name}", {}).get("calls", 0),
            stats.get(f"cmdstat_{name}", {}).get("usec", 0),
        )
        for name in SCRIPT_COMMANDS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=500, help="the pool each batch draws 500 from")
    args = parser.parse_args()
    pool = max(args.customers, 500)

    with (
        running_service() as service,
        httpx.Client(base_url=service.base_url, timeout=10) as client,
        redis.Redis.from_url(service.redis_url) as store,
    ):
        single_ms = [
            _timed_ms(
                client.build_request(
                    "POST",
                    "/v1/events",
                    json={
                        "event_id": uuid.uuid4().hex,
                        "customer_id": f"c-{i % 1000}",
                        "type": "product_view",
                        "properties": {"item_id": f"sku-{i % 50}", "page": f"/p/sku-{i % 50}"},
                    },
                ),
                client,
                202,
            )
            for i in range(args.singles)
        ]
        before = _script_stats(store)
        batch_ms = [
            _timed_ms(
                client.build_request(
                    "POST",
                    "/v1/events",
                    json={
                        "events": [
                            {
                                "event_id": f"{b}-{i}",
                                "customer_id": f"c-{(b * 500 + i) % pool}",
                                "type": "page_view",
                            }
                            for i in range(500)
                        ]
                    },
                ),
                client,
                202,
            )
            for b in range(args.batches)
        ]
        after = _script_stats(store)
        read_ms = [
            _timed_ms(client.build_request("GET", f"/v1/customers/c-{i % 1000}"), client, 200)
            for i in range(args.reads)
        ]
    print(
        json.dumps(
            {
                "single_event_ms": {
                    "p50": round(statistics.median(single_ms), 3),
                    "p95": round(percentile(single_ms, 0.95), 3),
                },
                "batch_500_ms_p50": round(statistics.median(batch_ms), 2),
                "batched_events_per_s_at_median": round(500 / (statistics.median(batch_ms) / 1000)),
                "batched_us_per_event_p50": round(statistics.median(batch_ms) * 1000 / 500, 1),
                "redis_scripts": {
                    name: {
                        "calls_per_batch": round((after[name][0] - before[name][0]) / args.batches, 1),
                        "usec_per_call": round(
                            (after[name][1] - before[name][1]) / max(1, after[name][0] - before[name][0]), 2
                        ),
                        "usec_per_event": round((after[name][1] - before[name][1]) / (500 * args.batches), 2),
                    }
                    for name in SCRIPT_COMMANDS
                },
                "profile_read_ms_p50": round(statistics.median(read_ms), 3),
                "requests": {
                    "singles": args.singles,
                    "batches": args.batches,
                    "reads": args.reads,
                    "customers": pool,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
