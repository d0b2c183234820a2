"""What ``nba evaluate`` reads from Redis: the decision log, the joined rewards and the published model.

Read only: it neither acknowledges, trims nor writes anything, so it runs beside the service and the
learner at any time. The streams are read in pages of ``page`` entries (``XRANGE``), and entries are
kept only when their decision time (the ``time_ms`` field, the service's clock, not the stream id,
which is Redis's) falls in ``[since_ms, until_ms)`` and, when given, their placement matches. The
decision log and the rewards are each read once, whole: at the default cap of 1,000,000 entries that is
a matter of seconds to a minute (docs/evaluation.md gives a measured figure).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from feature_store import keys
from feature_store.store import translated

Fields = dict[str, str]


class EvaluationStore:
    """Build with :meth:`connect` (or over an existing client); close with :meth:`aclose`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def connect(cls, url: str, *, timeout_s: float = 10.0) -> EvaluationStore:
        """A client of its own on ``url``: a few long reads, so a longer timeout than the hot path's."""
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return cls(client)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def decisions(
        self, since_ms: int | None = None, until_ms: int | None = None, placement: str | None = None
    ) -> list[Fields]:
        """The decision log's entries made in the window (and at the placement, when given)."""
        return [f async for f in self._entries(keys.DECISION_LOG, since_ms, until_ms, placement)]

    async def rewards(
        self, since_ms: int | None = None, until_ms: int | None = None, placement: str | None = None
    ) -> list[Fields]:
        """The joined rewards of decisions made in the window (and at the placement, when given)."""
        return [f async for f in self._entries(keys.REWARDS, since_ms, until_ms, placement)]

    async def snapshot(self) -> str | None:
        """The published model snapshot (JSON), ``None`` before the first publish."""
        async with translated():
            text: str | None = await self._redis.get(keys.MODEL)  # type: ignore[assignment]
        return text

    async def _entries(
        self,
        stream: str,
        since_ms: int | None,
        until_ms: int | None,
        placement: str | None,
        page: int = 2000,
    ) -> AsyncIterator[Fields]:
        start = "-"
        while True:
            async with translated():
                batch: Any = await self._redis.xrange(stream, min=start, max="+", count=page)
            for entry_id, fields in batch:
                start = f"({entry_id}"
                if not fields or (placement is not None and fields.get("placement") != placement):
                    continue
                if _inside(fields.get("time_ms", ""), since_ms, until_ms):
                    yield fields
            if len(batch) < page:
                return


def _inside(time_ms: str, since_ms: int | None, until_ms: int | None) -> bool:
    """Whether a decision time falls in the window. An entry without a readable time is kept only when
    the window is unbounded (the evaluation then counts it as malformed)."""
    if since_ms is None and until_ms is None:
        return True
    try:
        at = int(time_ms)
    except ValueError:
        return False
    return (since_ms is None or at >= since_ms) and (until_ms is None or at < until_ms)
