"""How the service's background loops wait: until their time is up or they are told to stop.

Every loop ends by its ``stop`` event, never by cancellation alone. On Python 3.11, ``asyncio.wait_for``
(which redis-py uses for every write) can swallow a cancellation that arrives as the write completes
(fixed in 3.12), and a loop whose cancellation was swallowed sleeps on forever: the worker's shutdown
then waits for it until killed. A loop that checks ``stop`` ends at its next turn whatever happened to a
cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
