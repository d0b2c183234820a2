"""The model snapshot a worker scores with, swapped in off the hot path.

A background task looks at the published version every ``NBA_MODEL_REFRESH_S`` (0.5 s); when it moved,
it reads the snapshot, builds a scorer and swaps it in with one assignment, so a decision scores with
one snapshot from start to end and carries its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from feature_store import StoreUnavailable
from feature_store.learning import LearnerStore
from models.snapshot import EMPTY, LinearScorer, Snapshot
from models.stopping import pause

log = structlog.get_logger("nba.models")


class Models:
    def __init__(self) -> None:
        self.scorer = LinearScorer(EMPTY)
        self.loaded = False  # whether the store has been asked at least once

    async def refresh(self, store: LearnerStore) -> bool:
        """Load a newer snapshot if there is one; whether the scorer changed."""
        version = await store.model_version()
        self.loaded = True
        if version is None or version == self.scorer.version:
            return False
        text = await store.snapshot()
        if text is None:
            return False
        started = time.perf_counter()
        self.scorer = LinearScorer(Snapshot.from_json(text))
        # Built on the event loop: decisions wait meanwhile, so the time is logged.
        load_ms = round((time.perf_counter() - started) * 1000, 3)
        log.info("model_loaded", version=self.scorer.version, load_ms=load_ms, snapshot_bytes=len(text))
        return True

    async def watch(self, store: LearnerStore, stop: asyncio.Event, every_s: float) -> None:
        """Follow the published version until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(StoreUnavailable):  # decisions fall back meanwhile; it tries again
                await self.refresh(store)
            await pause(stop, every_s)
