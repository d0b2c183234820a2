"""Event ingestion, measured end to end: ``python -m load_tests.bench_ingest``.

Starts ``nba serve`` on its embedded Redis (a fresh temporary data folder, one worker, a free port),
then from this process:

1. posts single events one after another and reports the median and p95 latency;
2. posts batches of 500 events for 500 distinct customers and reports events per second;
3. reads profiles back and reports the median latency.

Figures print as one JSON line, so runs can be compared. The load is sequential (one request in
flight), so the figures are latencies of an idle service, not its capacity; the capacity benchmark
with a compiled load generator arrives with the performance work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import httpx

from load_tests.service import percentile, running_service


def _timed_ms(request: httpx.Request, client: httpx.Client, status: int) -> float:
    start = time.perf_counter()
    response = client.send(request)
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == status, response.text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()

    with running_service() as service, httpx.Client(base_url=service.base_url, timeout=10) as client:
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
        batch_ms = [
            _timed_ms(
                client.build_request(
                    "POST",
                    "/v1/events",
                    json={
                        "events": [
                            {"event_id": f"{b}-{i}", "customer_id": f"c-{i}", "type": "page_view"}
                            for i in range(500)
                        ]
                    },
                ),
                client,
                202,
            )
            for b in range(args.batches)
        ]
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
                "profile_read_ms_p50": round(statistics.median(read_ms), 3),
                "requests": {"singles": args.singles, "batches": args.batches, "reads": args.reads},
            }
        )
    )


if __name__ == "__main__":
    main()
