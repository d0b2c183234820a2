"""The worker's cyclic collector: what start-up built is frozen out of its sight, and decisions in
flight together do not set off its young collections (app/main.py says why)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from app.main import YOUNG_COLLECTION_THRESHOLD
from tests.conftest import AppFactory
from tests.integration.test_decisions import decide


async def test_decisions_in_flight_together_set_off_no_young_collection(make_client: AppFactory) -> None:
    before = gc.get_threshold()
    collections: list[int] = []

    def started(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    page_view = {"type": "page_view", "properties": {"page": "/"}}
    async with make_client() as api:
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
        gc.callbacks.append(started)
        try:
            for burst in range(5):  # 32 in flight at once, as the benchmark's closed loop keeps them
                await asyncio.gather(*(decide(api, f"c-{burst}-{i}", event=page_view) for i in range(32)))
        finally:
            gc.callbacks.remove(started)
    assert collections == []
    assert gc.get_threshold() == before  # a process that builds the app again gets its own back
