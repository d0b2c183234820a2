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
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

from feature_store.embedded import free_port


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    data_dir = tempfile.mkdtemp(prefix="nba-bench-")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", data_dir],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the service did not become ready")
                time.sleep(0.1)

            single_ms = []
            for i in range(args.singles):
                body = {
                    "event_id": uuid.uuid4().hex,
                    "customer_id": f"c-{i % 1000}",
                    "type": "product_view",
                    "properties": {"item_id": f"sku-{i % 50}", "page": f"/p/sku-{i % 50}"},
                }
                start = time.perf_counter()
                response = client.post("/v1/events", json=body)
                single_ms.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 202, response.text

            batch_s = []
            for b in range(args.batches):
                events = [
                    {
                        "event_id": f"{b}-{i}",
                        "customer_id": f"c-{i}",
                        "type": "page_view",
                        "properties": {"page": "/"},
                    }
                    for i in range(500)
                ]
                start = time.perf_counter()
                response = client.post("/v1/events", json={"events": events})
                batch_s.append(time.perf_counter() - start)
                assert response.json()["accepted"] == 500, response.text

            read_ms = []
            for i in range(args.reads):
                start = time.perf_counter()
                response = client.get(f"/v1/customers/c-{i % 1000}")
                read_ms.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200

        print(
            json.dumps(
                {
                    "single_event_ms": {
                        "p50": round(statistics.median(single_ms), 3),
                        "p95": round(_percentile(single_ms, 0.95), 3),
                    },
                    "batch_500_ms_p50": round(statistics.median(batch_s) * 1000, 2),
                    "batched_events_per_s_at_median": round(500 / statistics.median(batch_s)),
                    "profile_read_ms_p50": round(statistics.median(read_ms), 3),
                    "requests": {"singles": args.singles, "batches": args.batches, "reads": args.reads},
                }
            )
        )
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
