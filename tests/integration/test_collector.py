"""The worker's cyclic collector: what start-up built is frozen out of its sight, and decisions in
flight together do not set off its young collections (app/main.py says why)."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

from asgi_lifespan import LifespanManager

from app.main import YOUNG_COLLECTION_THRESHOLD, create_app
from app.settings import Settings
from load_tests.bench_cpu import asgi_caller


async def test_decisions_in_flight_together_set_off_no_young_collection(redis_url: str) -> None:
    before = gc.get_threshold()
    collections: list[int] = []

    def started(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    def body(customer: str) -> bytes:
        event = {"type": "page_view", "properties": {"page": "/"}}
        return json.dumps({"customer_id": customer, "placement": "web.home", "event": event}).encode()

    app = create_app(Settings(_env_file=None, redis_url=redis_url, log_format="json"))
    # Requests made straight through ASGI, as the worker's server makes them: an HTTP client in the
    # test's process would add its own objects in flight to the count.
    async with LifespanManager(app) as manager:
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
        call = asgi_caller(manager.app)
        gc.callbacks.append(started)
        try:
            for burst in range(5):  # 32 in flight at once, as the benchmark's closed loop keeps them
                statuses = await asyncio.gather(
                    *(call("/v1/decide", body(f"c-{burst}-{i}")) for i in range(32))
                )
                assert statuses == [200] * 32
        finally:
            gc.callbacks.remove(started)
    assert collections == []
    assert gc.get_threshold() == before  # a process that builds the app again gets its own back
