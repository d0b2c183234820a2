"""The live catalogue of one worker, and how a reload reaches every worker and replica.

A reload (``POST /v1/admin/reload``) loads and checks the files; if they are valid it swaps them in
and bumps a generation counter in Redis. Every worker watches the counter (once a second) and reloads
from its own files when it moves, so all workers and replicas converge on the same catalogue, as long
as they read the same files. An invalid catalogue is refused with every problem, and the live one
stays.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from feature_store import ProfileStore, StoreUnavailable
from feature_store.features import feature_names
from models.stopping import pause
from policies.catalogue import Catalogue, CatalogueInvalid, default_path, load

log = structlog.get_logger("nba.catalogue")


class Catalogues:
    def __init__(self, path: Path | None) -> None:
        self.path = path or default_path()
        self.live: Catalogue = load(self.path, feature_names())
        self._generation: str | None = None
        self._unannounced = False  # a reload made here that the other workers have not heard of

    def reload(self) -> Catalogue:
        """Load the files again; raises :class:`CatalogueInvalid` and keeps the live one if they are bad."""
        self.live = load(self.path, feature_names())
        log.info("catalogue_loaded", version=self.live.version, actions=len(self.live.actions))
        return self.live

    async def start(self, store: ProfileStore) -> None:
        """Note the reload generation before serving: a reload announced from then on is one to follow.

        Without it the watcher would note the generation only at its first look, and take a reload
        announced before that (by a worker that started a moment earlier) as the generation it began at.
        """
        with contextlib.suppress(StoreUnavailable):  # the watcher notes it once the store answers
            self._generation = await store.catalogue_generation()

    async def tell_others(self, store: ProfileStore) -> bool:
        """Announce a reload made here to the other workers. When the store is down, returns ``False``
        and the watcher announces it once the store is back."""
        self._unannounced = True
        try:
            self._generation = await store.bump_catalogue_generation()
        except StoreUnavailable:
            log.warning("catalogue_reload_not_announced_yet")
            return False
        self._unannounced = False
        return True

    async def watch(self, store: ProfileStore, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Reload when another worker announced a reload, until ``stop`` is set."""
        while not await pause(stop, every_s):
            try:
                if self._unannounced:
                    await self.tell_others(store)
                generation = await store.catalogue_generation()
                if self._generation is None:
                    self._generation = generation
                elif generation != self._generation:
                    self._generation = generation
                    try:
                        self.reload()
                    except CatalogueInvalid as exc:
                        log.error("catalogue_reload_refused", problems=[str(p) for p in exc.problems])
            except StoreUnavailable:
                pass  # the store is down: nothing can have been announced meanwhile
