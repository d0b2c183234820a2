"""A worker's background loops end by their stop event, never by cancellation alone (models/stopping.py
says why: on Python 3.11 a cancellation can be swallowed by redis-py's ``wait_for``, and a watcher whose
cancellation was lost slept on and held the worker's shutdown)."""

from __future__ import annotations

import asyncio

from app.catalogues import Catalogues
from app.snapshots import Models
from feature_store import ProfileStore
from models.stopping import pause
from tests.integration.test_learner import until


async def test_the_watchers_end_when_told_to_stop_in_the_middle_of_an_hour_long_wait(
    store: ProfileStore,
) -> None:
    stop = asyncio.Event()
    models = Models()
    watchers = [
        asyncio.create_task(Catalogues(None).watch(store, stop, every_s=3600)),
        asyncio.create_task(models.watch(store.learning(), stop, every_s=3600)),
    ]

    async def asked() -> bool:  # the model watcher has asked the store once and is now waiting
        return models.loaded

    await until(asked, 5, "the model watcher's first look")
    assert not any(w.done() for w in watchers)
    stop.set()
    async with asyncio.timeout(5):  # a bound, not a performance assertion: they would wait an hour
        await asyncio.gather(*watchers)
    assert not any(w.cancelled() for w in watchers)


async def test_a_pause_says_whether_it_was_cut_short_by_stop() -> None:
    stop = asyncio.Event()
    assert await pause(stop, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, stop.set)
    async with asyncio.timeout(5):
        assert await pause(stop, 3600) is True
