"""Timed triggers in Redis: pending instances, due times, and claiming them to fire exactly once.

An instance is one trigger for one known customer (``TRIGGER|c:ID``), kept in the zset
``nba:{t}:due`` scored by when it is due. Events start and cancel instances (:class:`TriggerOp`,
computed by the service from the catalogue), in the same pipelined round trip that applies the events
(:meth:`feature_store.store.ProfileStore.ingest`); the rules of ``triggers_schedule.lua`` make
that safe to repeat.

Firing is claim, fire, done. :meth:`TriggerStore.claim` moves due instances into ``nba:{t}:firing``
under a lease, atomically, so that with several workers or replicas each instance is claimed by one.
A worker that dies while firing leaves its lease to expire, and the instance is claimed again: the
decision id of a firing is derived from the instance and its due time, so the worker that takes over
finds the decision already made, if it was, and does not make it twice (app/triggers.py).

Due times live in Redis, so they survive restarts of the service, and of Redis with persistence. An
instance that fell due while no worker ran is claimed when one comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from feature_store import keys
from feature_store.calls import lua, sha1, translated


@dataclass(frozen=True, slots=True)
class TriggerOp:
    """What one event does to one trigger instance: starts it (due at ``time_ms + delay_ms``) or
    cancels it."""

    start: bool
    trigger_id: str
    ref: str  # the customer, "c:<id>"
    time_ms: int  # of the event
    delay_ms: int

    @property
    def member(self) -> str:
        return f"{self.trigger_id}|{self.ref}"

    def args(self) -> list[str]:
        return ["s" if self.start else "c", self.member, str(self.time_ms), str(self.delay_ms)]


def schedule_args(ops: Iterable[TriggerOp], forget_before_ms: int) -> list[str]:
    """ARGV of ``triggers_schedule.lua``: the ops in the order their events happened; cancels older
    than ``forget_before_ms`` are forgotten. Empty when there are no ops."""
    ordered = sorted(ops, key=lambda op: op.time_ms)  # stable: one event's ops keep their order
    if not ordered:
        return []
    return [str(forget_before_ms), *(arg for op in ordered for arg in op.args())]


@dataclass(frozen=True, slots=True)
class Firing:
    """A claimed instance: the trigger, the customer, and when it was due."""

    trigger_id: str
    ref: str
    due_ms: int

    @property
    def member(self) -> str:
        return f"{self.trigger_id}|{self.ref}|{self.due_ms}"

    @classmethod
    def parse(cls, member: str) -> Firing:
        trigger_id, _, rest = member.partition("|")  # trigger ids have no "|"; customer ids may
        ref, _, due = rest.rpartition("|")
        return cls(trigger_id, ref, int(due))


SCHEDULE_SOURCE = lua("triggers_schedule.lua")
SCHEDULE_SHA = sha1(SCHEDULE_SOURCE)
SCHEDULE_KEYS = (keys.TRIGGERS_DUE, keys.TRIGGERS_CANCELLED)


class TriggerStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._claim = client.register_script(lua("triggers_claim.lua"))
        self._schedule = client.register_script(SCHEDULE_SOURCE)

    async def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[Firing]:
        async with translated():
            members: Sequence[Any] = await self._claim(
                keys=[keys.TRIGGERS_DUE, keys.TRIGGERS_FIRING], args=[now_ms, lease_ms, limit]
            )
        return [Firing.parse(m.decode() if isinstance(m, bytes) else str(m)) for m in members]

    async def done(self, firing: Firing) -> None:
        """The instance was fired (or dropped): it leaves the firing set."""
        async with translated():
            await self._redis.zrem(keys.TRIGGERS_FIRING, firing.member)

    async def schedule(self, ops: Iterable[TriggerOp], forget_before_ms: int) -> None:
        """Apply ops on their own (the service pipelines them with the events instead)."""
        if args := schedule_args(ops, forget_before_ms):
            async with translated():
                await self._schedule(keys=SCHEDULE_KEYS, args=args)

    async def forget(self, ref: str, trigger_ids: Iterable[str]) -> int:
        """Remove a customer's pending instances and remembered cancels (an erasure); how many
        instances were pending."""
        members = [f"{trigger_id}|{ref}" for trigger_id in trigger_ids]
        if not members:
            return 0
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.TRIGGERS_DUE, *members)
            pipe.zrem(keys.TRIGGERS_CANCELLED, *members)
            removed, _ = await pipe.execute()
        return int(removed)

    async def pending(self, ref: str | None = None) -> dict[str, int]:
        """Pending instances (trigger id -> due ms); of one customer when ``ref`` is given. Scans the
        due set: for operators and tests, not for the hot path."""
        async with translated():
            found: Any = await self._redis.zrange(keys.TRIGGERS_DUE, 0, -1, withscores=True)
        out: dict[str, int] = {}
        for member, score in found:
            text = member.decode() if isinstance(member, bytes) else str(member)
            trigger_id, _, member_ref = text.partition("|")
            if ref is None or member_ref == ref:
                out[text if ref is None else trigger_id] = int(score)
        return out

    async def backlog(self, now_ms: int) -> dict[str, int]:
        """How many instances are pending, how many of them are due now, and how many are firing."""
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.TRIGGERS_DUE)
            pipe.zcount(keys.TRIGGERS_DUE, "-inf", now_ms)
            pipe.zcard(keys.TRIGGERS_FIRING)
            pending, due, firing = await pipe.execute()
        return {"pending": int(pending), "due": int(due), "firing": int(firing)}
