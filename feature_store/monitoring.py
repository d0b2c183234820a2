"""What operators watch, read from Redis: backlogs and Redis's own configuration (for ``/metrics``, at
scrape) and the dashboard's samples (keys.py, ``{d}``). Nothing here is on the hot path: a scrape or a
sample costs two or three round trips.

The learner's lag is the ``lag`` that ``XINFO GROUPS`` reports (Redis 7.0 and later). An older Redis
does not report it, so it is counted instead, by a script that walks the stream from the group's last
delivered entry, at most ``LAG_COUNT_CAP`` entries (a value of ``LAG_COUNT_CAP`` means "at least").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from feature_store import keys, redis_config
from feature_store.calls import translated
from feature_store.learning import GROUP

LAG_COUNT_CAP: Final = 20_000
STREAMS: Final = {"decisions": keys.DECISION_LOG, "outcomes": keys.OUTCOME_LOG}

# Entries after ARGV[1] (an exclusive XRANGE start), up to ARGV[2]: read in pages of 1000 so that Lua
# never holds more than one page (Redis before 7.0 only; later ones report the lag themselves).
_COUNT_AFTER = """
local n, start, cap = 0, ARGV[1], tonumber(ARGV[2])
while n < cap do
  local page = redis.call("XRANGE", KEYS[1], start, "+", "COUNT", math.min(1000, cap - n))
  if #page == 0 then break end
  n = n + #page
  start = "(" .. page[#page][1]
end
return n
"""


@dataclass(frozen=True, slots=True)
class Backlogs:
    """How much work waits, across the whole deployment, at one moment."""

    learner_lag: Mapping[str, int]  # "decisions"/"outcomes" -> entries the learner's group has not read
    pending_rewards: int  # decisions waiting for their attribution window to close
    triggers_pending: int  # trigger instances waiting, due or not
    triggers_due: int  # of those, due now: the backlog
    dead_letters: int
    outbox_due: int  # deliveries waiting for an attempt, now or later (retries included)


def _group_lag(reply: Any, length: Any) -> tuple[int | None, str | None]:
    """From ``XINFO GROUPS`` and ``XLEN``: the lag if Redis reported it, else the id to count after.

    No stream: nothing to read (0). A stream without the learner's group (no learner ran yet): all of it.
    """
    if isinstance(reply, Exception):  # "no such key": the stream was never written
        return 0, None
    for group in reply:
        if group.get("name") == GROUP:
            lag = group.get("lag")
            if lag is not None:
                return int(lag), None
            return None, str(group.get("last-delivered-id", "0-0"))
    return (0 if isinstance(length, Exception) else int(length)), None


class MonitoringStore:
    """Build with ``ProfileStore.monitoring()``."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def backlogs(self, now_ms: int) -> Backlogs:
        async with translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in STREAMS.values():
                    pipe.xinfo_groups(stream)
                    pipe.xlen(stream)
                pipe.zcard(keys.PENDING)
                pipe.zcard(keys.TRIGGERS_DUE)
                pipe.zcount(keys.TRIGGERS_DUE, "-inf", now_ms)
                pipe.zcard(keys.OUTBOX_DEAD)
                pipe.smembers(keys.OUTBOX_DESTINATIONS)
                first: list[Any] = await pipe.execute(raise_on_error=False)
            for reply in first[len(STREAMS) * 2 :]:
                if isinstance(reply, Exception):
                    raise reply
            lags: dict[str, int | None] = {}
            count_after: dict[str, str] = {}
            for index, name in enumerate(STREAMS):
                lag, after = _group_lag(first[2 * index], first[2 * index + 1])
                lags[name] = lag
                if after is not None:
                    count_after[name] = after
            pending, triggers_pending, triggers_due, dead, destinations = first[len(STREAMS) * 2 :]
            destinations = sorted(destinations)
            outbox_due = 0
            if destinations or count_after:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for destination in destinations:
                        pipe.zcard(keys.outbox_due(destination))
                    for name, after in count_after.items():
                        pipe.eval(_COUNT_AFTER, 1, STREAMS[name], f"({after}", LAG_COUNT_CAP)
                    second: list[Any] = await pipe.execute()
                outbox_due = sum(int(n) for n in second[: len(destinations)])
                for name, counted in zip(count_after, second[len(destinations) :], strict=True):
                    lags[name] = int(counted)
        return Backlogs(
            learner_lag={name: int(lag or 0) for name, lag in lags.items()},
            pending_rewards=int(pending),
            triggers_pending=int(triggers_pending),
            triggers_due=int(triggers_due),
            dead_letters=int(dead),
            outbox_due=outbox_due,
        )

    async def config(self) -> list[redis_config.Finding] | None:
        """The settings of this Redis that are not what the service needs (redis_config.py), read now;
        ``None`` when Redis refuses ``CONFIG GET`` (a managed Redis that renames it, a user without it)."""
        async with translated():
            try:
                return redis_config.judge(await redis_config.read(self._redis))
            except ResponseError:
                return None

    async def claim_sample(self, slot: int, ttl_ms: int = 60_000) -> bool:
        """Take the 10-s ``slot`` for this worker; ``False`` when another worker (or replica) has it."""
        async with translated():
            return bool(await self._redis.set(keys.dashboard_slot(slot), "1", nx=True, px=ttl_ms))

    async def append_sample(self, sample: str, keep: int) -> None:
        """Add a sample (JSON) at the end of the list and keep the last ``keep``, in one transaction."""
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(keys.DASHBOARD_SAMPLES, sample)
            pipe.ltrim(keys.DASHBOARD_SAMPLES, -keep, -1)
            await pipe.execute()

    async def samples(self, count: int) -> Sequence[str]:
        """The last ``count`` samples, oldest first."""
        async with translated():
            found = await self._redis.lrange(keys.DASHBOARD_SAMPLES, -count, -1)
        return [str(text) for text in found]
