"""What the learner reads and writes in Redis. Every key is a ``{l}`` key (keys.py) or a decision's
summary, so that :meth:`LearnerStore.publish` moves the model, the pending set and the position in each
stream together in one transaction: after a crash, the learner resumes from a snapshot, a pending set and
a position that agree, and nothing is learned twice or lost.

The streams are read through a consumer group without acknowledgements (``XREADGROUP ... NOACK``): the
group only hands out each entry once, and what has been learned is the position published with the model
(``nba:{l}:read``). A restart puts the group back there (:meth:`LearnerStore.rewind`), so the entries read
and not published are handed out again. Acknowledging instead cost Redis a pending-list entry and an
``XCLAIM`` in its append-only file per entry read, and an ``XACK`` of a second's entries inside the
publishing transaction, which held Redis for up to 7 ms at 1,770 decisions per second: every decision of
that moment waited behind it (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx

from feature_store import keys
from feature_store.calls import translated as _translated
from feature_store.errors import LockLost
from feature_store.keys import ProfileKeys

GROUP = "learner"
CONSUMER = "learner"

_RENEW = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""

Entry = tuple[str, dict[str, str]]
STREAMS = (keys.DECISION_LOG, keys.OUTCOME_LOG)


def before(entry_id: str) -> str:
    """The stream id just before ``entry_id`` (``ms-seq``): a group made there hands ``entry_id`` out next."""
    ms, _, seq = entry_id.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{2**64 - 1}" if int(ms) > 0 else "0"


class LearnerStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def rewind(self) -> None:
        """Hand out again, from the next read on, every entry after the position last published.

        A deployment whose learner acknowledged entries (before ``nba:{l}:read`` existed) has no position
        yet: it starts before the first entry that learner left unacknowledged, or where its group stands
        when there is none. The group is made anew at that position, so no old pending list stays behind.
        """
        async with _translated():
            published: Any = await self._redis.hgetall(keys.LEARNER_READ)
            for stream in STREAMS:
                position = published.get(stream) or await self._first_unacknowledged(stream)
                if position is None:
                    continue
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xgroup_destroy(stream, GROUP)
                    pipe.xgroup_create(stream, GROUP, id=position, mkstream=True)
                    await pipe.execute()

    async def _first_unacknowledged(self, stream: str) -> str | None:
        """The id just before the first entry a learner that acknowledged left pending, if any."""
        summary: Any = await self._redis.xpending(stream, GROUP)
        first = summary.get("min") if summary.get("pending") else None
        return None if first is None else before(str(first))

    async def acquire(self, token: str, ttl_ms: int) -> bool:
        """Become the one learner, for ``ttl_ms`` unless renewed."""
        async with _translated():
            return bool(await self._redis.set(keys.LEARNER_LOCK, token, nx=True, px=ttl_ms))

    async def renew(self, token: str, ttl_ms: int) -> bool:
        async with _translated():
            return bool(await self._renew(keys=[keys.LEARNER_LOCK], args=[token, ttl_ms]))

    async def release(self, token: str) -> None:
        async with _translated():
            await self._release(keys=[keys.LEARNER_LOCK], args=[token])

    async def ensure_groups(self) -> None:
        """Create the consumer groups, reading each stream from its start the first time."""
        async with _translated():
            for stream in STREAMS:
                try:
                    await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except rx.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def read(self, stream: str, count: int) -> list[Entry]:
        """The next entries of ``stream``, oldest first: each is handed out once (until a rewind)."""
        async with _translated():
            reply: Any = await self._redis.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=count, noack=True)
        return [(i, f) for _, batch in reply for i, f in batch]

    async def add_pending(self, due: Mapping[str, int]) -> None:
        if due:
            async with _translated():
                await self._redis.zadd(keys.PENDING, dict(due), nx=True)

    async def closes(self, members: Sequence[str]) -> list[int | None]:
        """When each member's attribution window closes (ms), or ``None`` if it is not pending."""
        if not members:
            return []
        async with _translated():
            scores = await self._redis.zmscore(keys.PENDING, list(members))
        return [None if score is None else int(score) for score in scores]

    async def due(self, now_ms: int, limit: int) -> list[str]:
        async with _translated():
            found: list[str] = await self._redis.zrangebyscore(  # type: ignore[assignment]
                keys.PENDING, "-inf", now_ms, start=0, num=limit
            )
        return found

    async def summaries(self, decision_ids: Sequence[str]) -> list[dict[str, str]]:
        """Each decision's summary (empty once it expired)."""
        if not decision_ids:
            return []
        async with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for decision_id in decision_ids:
                pipe.hgetall(keys.decision(decision_id))
            found: list[dict[str, str]] = await pipe.execute()
        return found

    async def purchases(self, windows: Sequence[tuple[str, int, int]]) -> list[list[float]]:
        """For each ``(customer ref, after_ms, until_ms)``, the revenues of the purchases in that window."""
        if not windows:
            return []
        async with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for ref, after_ms, until_ms in windows:
                pipe.zrangebyscore(ProfileKeys.parse(ref).purchases, f"({after_ms}", until_ms)
            found: list[list[str]] = await pipe.execute()
        return [[float(member.split("|")[1]) for member in members] for members in found]

    async def snapshot(self) -> str | None:
        async with _translated():
            text: str | None = await self._redis.get(keys.MODEL)  # type: ignore[assignment]
        return text

    async def publish(
        self,
        snapshot_json: str | None,
        version: str,
        learned: Sequence[str],
        read: Mapping[str, str],
        rewards: Sequence[Mapping[str, str]],
        log_max: int,
        token: str | None = None,
    ) -> None:
        """In one transaction: the snapshot and its version (``None``: no new model), the learned members
        out of the pending set, the position up to which each stream was read (stream -> the last entry
        id), and the joined rewards appended.

        With ``token``, only while the learner's lock holds it: a learner can lose its lock without
        knowing (stopped or starved past the lock's time between a renewal and the publish) while
        another takes it, and two learners publishing would each undo the other's learning. The lock is
        watched from the check to the transaction (``WATCH``: https://redis.io/docs/latest/develop/
        interact/transactions/#optimistic-locking-using-check-and-set), so one that changes or expires
        in between aborts it. Raises :class:`LockLost`, with nothing written."""
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            if token is not None:
                await pipe.watch(keys.LEARNER_LOCK)
                if await pipe.get(keys.LEARNER_LOCK) != token:
                    raise LockLost("the learner's lock is another learner's: nothing was published")
                pipe.multi()  # type: ignore[no-untyped-call]
            if snapshot_json is not None:
                pipe.set(keys.MODEL, snapshot_json)
                pipe.set(keys.MODEL_VERSION, version)
            if learned:
                pipe.zrem(keys.PENDING, *learned)
            if read:
                position: dict[Any, Any] = dict(read)
                pipe.hset(keys.LEARNER_READ, mapping=position)
            for reward in rewards:
                entry: dict[Any, Any] = dict(reward)
                pipe.xadd(keys.REWARDS, entry, maxlen=log_max, approximate=True)
            try:
                await pipe.execute()
            except rx.WatchError:
                raise LockLost("the learner's lock changed while publishing: nothing was published") from None

    async def model_version(self) -> str | None:
        async with _translated():
            version: str | None = await self._redis.get(keys.MODEL_VERSION)  # type: ignore[assignment]
        return version
