"""What the learner reads and writes in Redis. Every key is a ``{l}`` key (keys.py) or a decision's
summary, so that :meth:`LearnerStore.publish` moves the model, the pending set and the stream
acknowledgements together in one transaction: after a crash, the learner resumes from a snapshot and a
pending set that agree, and nothing is learned twice or lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx

from feature_store import keys
from feature_store.calls import translated as _translated
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


class LearnerStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        # Where each stream is read from: after a start, through the entries delivered to this consumer
        # before and not acknowledged (an entry id, from "0"), then new ones (">").
        self._cursor = {keys.DECISION_LOG: "0", keys.OUTCOME_LOG: "0"}

    def rewind(self) -> None:
        """Read each stream again from the first entry not acknowledged."""
        self._cursor = {keys.DECISION_LOG: "0", keys.OUTCOME_LOG: "0"}

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
            for stream in (keys.DECISION_LOG, keys.OUTCOME_LOG):
                try:
                    await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except rx.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def read(self, stream: str, count: int) -> list[Entry]:
        """Entries of ``stream`` for this learner: first those delivered before a restart and not yet
        acknowledged, then new ones."""
        async with _translated():
            while True:
                start = self._cursor[stream]
                reply: Any = await self._redis.xreadgroup(GROUP, CONSUMER, {stream: start}, count=count)
                messages = [(i, f) for _, batch in reply for i, f in batch]
                entries: list[Entry] = [(i, f) for i, f in messages if f]  # trimmed ones have no fields
                if start == ">":
                    return entries
                # The backlog is read once: from after its last entry read (they stay unacknowledged until
                # the learner publishes, so reading from "0" again would return them again).
                self._cursor[stream] = messages[-1][0] if messages else ">"
                if entries:
                    return entries

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
        acks: Mapping[str, Sequence[str]],
        rewards: Sequence[Mapping[str, str]],
        log_max: int,
    ) -> None:
        """In one transaction: the snapshot and its version (``None``: no new model), the learned members
        out of the pending set, the stream entries acknowledged, and the joined rewards appended."""
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            if snapshot_json is not None:
                pipe.set(keys.MODEL, snapshot_json)
                pipe.set(keys.MODEL_VERSION, version)
            if learned:
                pipe.zrem(keys.PENDING, *learned)
            for stream, ids in acks.items():
                if ids:
                    pipe.xack(stream, GROUP, *ids)
            for reward in rewards:
                entry: dict[Any, Any] = dict(reward)
                pipe.xadd(keys.REWARDS, entry, maxlen=log_max, approximate=True)
            await pipe.execute()

    async def model_version(self) -> str | None:
        async with _translated():
            version: str | None = await self._redis.get(keys.MODEL_VERSION)  # type: ignore[assignment]
        return version

    async def lag(self) -> int:
        """Entries of the decision log not yet acknowledged by the learner."""
        async with _translated():
            groups: Any = await self._redis.xinfo_groups(keys.DECISION_LOG)
        for group in groups:
            if group.get("name") == GROUP:
                return int(group.get("pending", 0)) + int(group.get("lag", 0) or 0)
        return 0
