"""Decisions, measured end to end: ``python -m load_tests.bench_decide``.

Starts ``nba serve`` on its embedded Redis with the shipped catalogue (one worker, a free port), then
posts ``/v1/decide`` calls one after another, each carrying the page view that prompted it, for 1000
customers on the web and chat placements, and reports the median and p95 latency seen by the client,
and the service's own decision latency from the decision log (``latency_ms``: from the start of the
decision to its recording round trip: the event applied and the profile read, then the policy).
Figures print as one JSON line. Sequential load: latencies of an idle service, not its capacity.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
import redis

from feature_store.keys import DECISION_LOG
from load_tests.service import percentile, running_service

PLACEMENTS = ("web.home", "web.product_page", "web.cart", "web.faq", "chat.proactive")
EVENTS = ("page_view", "product_view", "faq_view", "add_to_cart", "search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000)
    args = parser.parse_args()
    client_ms: list[float] = []
    with running_service() as service, httpx.Client(base_url=service.base_url, timeout=10) as client:
        for i in range(args.decisions):
            event_type = EVENTS[i % len(EVENTS)]
            properties = {"item_id": f"sku-{i % 40}", "price": 25.0} if event_type == "add_to_cart" else {}
            body = {
                "customer_id": f"c-{i % 1000}",
                "placement": PLACEMENTS[i % len(PLACEMENTS)],
                "event": {"type": event_type, "properties": properties},
                "context": {"device": "mobile" if i % 3 else "desktop"},
            }
            start = time.perf_counter()
            response = client.post("/v1/decide", json=body)
            client_ms.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
            assert not response.json()["fallback"], response.text
        with redis.Redis.from_url(service.redis_url, decode_responses=True) as store:
            server_ms = [float(fields["latency_ms"]) for _, fields in store.xrange(DECISION_LOG)]
    print(
        json.dumps(
            {
                "decide_client_ms": {
                    "p50": round(statistics.median(client_ms), 3),
                    "p95": round(percentile(client_ms, 0.95), 3),
                },
                "decide_service_ms": {
                    "p50": round(statistics.median(server_ms), 3),
                    "p95": round(percentile(server_ms, 0.95), 3),
                },
                "decisions": args.decisions,
            }
        )
    )


if __name__ == "__main__":
    main()
