"""What ``nba evaluate`` reads from Redis: the decision log, the joined rewards and the published model.

Read only: it neither acknowledges, trims nor writes anything, so it runs beside the service and the
learner at any time. The streams are read in pages of ``page`` entries (``XRANGE``), and entries are
kept only when their decision time (the ``time_ms`` field, the service's clock, not the stream id,
which is Redis's) falls in ``[since_ms, until_ms)`` and, when given, their placement matches. The
decision log and the rewards are each read once, whole: at the default cap of 1,000,000 entries that is
a matter of seconds to a minute (docs/evaluation.md gives a measured figure).

The uplift report (models/uplift.py) reads the rewards of a time range only (:meth:`EvaluationStore.
rewards_of_range`), its customers' purchases, and how many windows the learner has left unjoined.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from feature_store import keys
from feature_store.calls import translated
from feature_store.keys import ProfileKeys

if TYPE_CHECKING:
    from feature_store.store import ProfileStore

Fields = dict[str, str]
# The rewards stream's ids are Redis's times of appending: a reward is appended at or after its
# decision (when an outcome arrives, or when the window closes). Reading from this long before the
# range's start leaves room for the service's clock running ahead of Redis's.
CLOCK_SLACK_MS = 3_600_000


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

    @classmethod
    def of(cls, store: ProfileStore) -> EvaluationStore:
        """A view over the service's own client (and its bounded pool), for the report endpoint. Do not
        :meth:`aclose` it: the client is the store's."""
        return cls(store._redis)

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

    def rewards_of_range(self, since_ms: int, until_ms: int) -> AsyncIterator[Fields]:
        """The joined rewards of decisions made in ``[since_ms, until_ms)``, one at a time.

        The stream is read from ``since_ms`` (less :data:`CLOCK_SLACK_MS`) to its end: the reward of a
        decision made before ``until_ms`` is appended when its window closes, days later for a long
        window, and later still when the learner was behind, so the range's end bounds nothing."""
        return self._entries(
            keys.REWARDS, since_ms, until_ms, None, first_ms=max(0, since_ms - CLOCK_SLACK_MS)
        )

    async def purchases(
        self, spans: Sequence[tuple[str, int, int]], batch: int = 1000
    ) -> list[list[tuple[int, float, str]]]:
        """For each ``(customer ref, after_ms, until_ms)``, the customer's purchases in that span (after
        ``after_ms``, up to ``until_ms`` included), as ``(time_ms, revenue, member)``: one pipelined
        ``ZRANGEBYSCORE`` per customer, ``batch`` customers a round trip."""
        found: list[list[tuple[int, float, str]]] = []
        for start in range(0, len(spans), batch):
            async with translated(), self._redis.pipeline(transaction=False) as pipe:
                for ref, after_ms, until_ms in spans[start : start + batch]:
                    pipe.zrangebyscore(ProfileKeys.parse(ref).purchases, f"({after_ms}", until_ms)
                replies: list[list[str]] = await pipe.execute()
            for members in replies:
                bought = []
                for member in members:  # "time|revenue|event" (feature_store/lua/apply.lua)
                    time_ms, revenue, _ = member.split("|", 2)
                    bought.append((int(time_ms), float(revenue), member))
                found.append(bought)
        return found

    async def overdue(self, from_ms: int, until_ms: int) -> int:
        """How many (decision, action) windows closing in ``[from_ms, until_ms]`` the learner has not
        joined yet (``nba:{l}:pending``, scored by the close)."""
        if until_ms < from_ms:
            return 0
        async with translated():
            return int(await self._redis.zcount(keys.PENDING, from_ms, until_ms))

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
        first_ms: int | None = None,
    ) -> AsyncIterator[Fields]:
        start = "-" if first_ms is None else str(first_ms)
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
